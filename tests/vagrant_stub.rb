# A stand-in for Vagrant, loaded with `ruby -r tests/vagrant_stub.rb Vagrantfile`: it runs
# the Vagrantfile as Vagrant would (Vagrant.configure("2") { |config| ... }) and prints, at
# exit, what it defined as JSON:
#   {"version": "2", "global": {...}, "machines": {"lvs1": {...}, ...}}
# where each machine (and "global", for config.vm.* outside any define) records "box",
# "hostname", "networks" [{"type", options...}], "synced_folders", "provisioners"
# [{"name", options...}] and "providers" {"libvirt": {setting: value}, ...}.
require "json"

module Vagrant
  RECORD = { "machines" => {} }

  # Any block's settings: `x.memory = 1` is recorded as "memory" => 1, a call
  # `x.customize [...]` as "customize" => [[...], ...].
  class Settings
    def initialize(store)
      @store = store
    end

    def method_missing(name, *args, **options)
      key = name.to_s
      if key.end_with?("=")
        @store[key.chomp("=")] = args.first
      else
        (@store[key] ||= []) << (options.empty? ? args : args + [options])
      end
      nil
    end

    def respond_to_missing?(*)
      true
    end
  end

  class VM
    def initialize(store)
      @store = store
    end

    def box=(value)
      @store["box"] = value
    end

    def hostname=(value)
      @store["hostname"] = value
    end

    def network(type, **options)
      (@store["networks"] ||= []) << { "type" => type.to_s }.merge(stringify(options))
    end

    def synced_folder(source, destination, **options)
      (@store["synced_folders"] ||= []) << [source, destination, stringify(options)]
    end

    def provision(name, **options)
      (@store["provisioners"] ||= []) << { "name" => name.to_s }.merge(stringify(options))
    end

    def provider(name)
      settings = ((@store["providers"] ||= {})[name.to_s] ||= {})
      yield Settings.new(settings) if block_given?
    end

    def define(name, **_options)
      machine = (RECORD["machines"][name.to_s] ||= {})
      yield Config.new(machine)
    end

    def method_missing(name, *_args, **_options)
      (@store["other"] ||= []) << name.to_s
      nil
    end

    def respond_to_missing?(*)
      true
    end

    private

    def stringify(options)
      options.to_h { |k, v| [k.to_s, v] }
    end
  end

  class Config
    attr_reader :vm

    def initialize(store)
      @vm = VM.new(store)
      @store = store
    end

    def method_missing(name, *_args, **_options) # config.ssh, config.vagrant, ...
      Settings.new((@store[name.to_s] ||= {}))
    end

    def respond_to_missing?(*)
      true
    end
  end

  def self.configure(version)
    RECORD["version"] = version
    yield Config.new((RECORD["global"] ||= {}))
  end
end

at_exit { puts JSON.generate(Vagrant::RECORD) if $!.nil? || ($!.is_a?(SystemExit) && $!.success?) }
