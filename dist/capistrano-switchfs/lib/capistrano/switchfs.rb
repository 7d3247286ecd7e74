# `require "capistrano/switchfs"` in a Capfile, after capistrano/deploy: loads the tasks that
# serve the site through switchfs (lib/capistrano/tasks/switchfs.rake; README.md of the gem).
require "capistrano/switchfs/version"
require "capistrano/switchfs/fleet"
load File.expand_path("tasks/switchfs.rake", __dir__)
