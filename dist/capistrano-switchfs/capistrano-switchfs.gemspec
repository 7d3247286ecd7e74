require_relative "lib/capistrano/switchfs/version"

Gem::Specification.new do |spec|
  spec.name = "capistrano-switchfs"
  spec.version = Capistrano::Switchfs::VERSION
  spec.summary = "Capistrano 3 tasks that switch a fleet's switchfs docroots at one instant"
  spec.description = "Replaces Capistrano's per-host symlink flip (deploy:symlink:release) " \
                     "with switchctl prepare on every host, then switchctl activate --at one " \
                     "instant; rollback and cleanup through switchfs."
  spec.authors = ["switchfs"]
  spec.license = "MIT"
  spec.homepage = "https://github.com/switchfs/switchfs"
  spec.files = Dir["lib/**/*.rb", "lib/**/*.rake", "README.md"]
  spec.require_paths = ["lib"]
  spec.required_ruby_version = ">= 2.7"
  spec.add_dependency "capistrano", "~> 3.7"
end
