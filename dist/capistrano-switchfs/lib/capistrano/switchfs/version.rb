module Capistrano
  module Switchfs
    VERSION = "0.1.0".freeze
  end
end
