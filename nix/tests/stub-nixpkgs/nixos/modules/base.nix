# Stand-in for nixpkgs' module-list.nix: the NixOS options (outside qemu-vm.nix) that the
# project's modules set or read, declared with the types and defaults nixpkgs gives them
# (nixos/modules/tasks/network-interfaces.nix, tasks/filesystems.nix, config/networking.nix,
# services/misc/qemu-guest-agent.nix, services/hardware/udev.nix, system/boot/systemd.nix,
# system/boot/kernel.nix, system/boot/stage-1.nix, config/system-path.nix, system/etc/etc.nix,
# misc/documentation.nix, misc/version.nix, misc/assertions.nix,
# system/activation/top-level.nix). Anything else a module defines is "an option that does not
# exist" here: add it, typed as in nixpkgs.
{
  config,
  lib,
  pkgs,
  ...
}: let
  inherit (lib) mkOption types;
  listOfStr = mkOption {
    type = types.listOf types.str;
    default = [];
  };
  bool = default:
    mkOption {
      type = types.bool;
      inherit default;
    };
  failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
in {
  options = {
    assertions = mkOption {
      type = types.listOf types.anything;
      default = [];
    };
    warnings = listOfStr;

    networking = {
      hostName = mkOption {
        type = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$";
        default = "nixos";
      };
      domain = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      # Lines of /etc/hosts (config/networking.nix); nixpkgs' test network writes the nodes' names.
      extraHosts = mkOption {
        type = types.lines;
        default = "";
      };
      useDHCP = bool true;
      usePredictableInterfaceNames = bool true;
      firewall.enable = bool true;
      interfaces = mkOption {
        default = {};
        type = types.attrsOf (types.submodule {
          options.useDHCP = mkOption {
            type = types.nullOr types.bool;
            default = null;
          };
          options.ipv4.addresses = mkOption {
            default = [];
            type = types.listOf (types.submodule {
              options.address = mkOption {type = types.str;};
              options.prefixLength = mkOption {type = types.ints.between 0 32;};
            });
          };
        });
      };
    };

    services.qemuGuest.enable = bool false;
    services.timesyncd.enable = bool true;

    systemd.services = mkOption {
      default = {};
      type = types.attrsOf (types.submodule {
        options = {
          enable = bool true;
          description = mkOption {
            type = types.str;
            default = "";
          };
          wantedBy = listOfStr;
          requiredBy = listOfStr;
          wants = listOfStr;
          requires = listOfStr;
          after = listOfStr;
          before = listOfStr;
          path = mkOption {
            type = types.listOf (types.either types.package types.str);
            default = [];
          };
          environment = mkOption {
            type = types.attrsOf (types.nullOr (types.oneOf [types.str types.path types.package]));
            default = {};
          };
          preStart = mkOption {
            type = types.lines;
            default = "";
          };
          script = mkOption {
            type = types.lines;
            default = "";
          };
          serviceConfig = mkOption {
            type = types.attrsOf types.anything;
            default = {};
          };
        };
      });
    };

    # tasks/filesystems.nix: what is mounted where (qemu-vm.nix puts the VM's own over it).
    fileSystems = mkOption {
      default = {};
      type = types.attrsOf (types.submodule ({name, ...}: {
        options = {
          mountPoint = mkOption {
            type = types.str;
            default = name;
          };
          device = mkOption {
            type = types.nullOr types.str;
            default = null;
          };
          fsType = mkOption {
            type = types.str;
            default = "auto";
          };
          options = mkOption {
            type = types.listOf types.str;
            default = ["defaults"];
          };
          neededForBoot = bool false;
          overlay = {
            lowerdir = mkOption {
              type = types.nullOr (types.listOf types.str);
              default = null;
            };
            upperdir = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
            workdir = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
          };
        };
      }));
    };

    boot = {
      initrd = {
        availableKernelModules = listOfStr;
        kernelModules = listOfStr;
        # services/hardware/udev.nix: rules for the initrd only (99-local.rules), used by the
        # scripted stage 1 and by systemd's.
        services.udev.rules = mkOption {
          type = types.lines;
          default = "";
        };
      };
      kernelModules = listOfStr;
      kernelParams = listOfStr;
      consoleLogLevel = mkOption {
        type = types.int;
        default = 4;
      };
      kernelPackages = mkOption {
        type = types.raw;
        default = {};
      };
    };

    environment = {
      variables = mkOption {
        type = types.attrsOf (types.either types.str (types.listOf types.str));
        default = {};
      };
      systemPackages = mkOption {
        type = types.listOf types.package;
        default = [];
      };
      etc = mkOption {
        default = {};
        type = types.attrsOf (types.submodule {
          options.enable = bool true;
          options.text = mkOption {
            type = types.nullOr types.lines;
            default = null;
          };
          options.source = mkOption {
            type = types.path;
          };
          options.mode = mkOption {
            type = types.str;
            default = "symlink";
          };
        });
      };
    };

    documentation.enable = bool true;

    system = {
      stateVersion = mkOption {
        type = types.str;
        default = lib.trivial.release;
      };
      name = mkOption {
        type = types.str;
        default =
          if config.networking.hostName == ""
          then "unnamed"
          else config.networking.hostName;
      };
      build = mkOption {
        type = types.lazyAttrsOf types.raw;
        default = {};
      };
      boot.loader.initrdFile = mkOption {
        type = types.str;
        default = "initrd";
      };
    };
  };

  # services/hardware/udev.nix
  config.boot.kernelParams = lib.mkIf (!config.networking.usePredictableInterfaceNames) ["net.ifnames=0"];

  # system/boot/stage-1.nix: the initrd, recorded with its modules and its udev rules.
  config.system.build.initialRamdisk = pkgs.runCommand "initrd-linux" {
    inherit (config.boot.initrd) availableKernelModules kernelModules;
    udevRules = config.boot.initrd.services.udev.rules;
  } "the initrd (recorded, not built)";

  # As nixpkgs' top-level.nix: the system fails to build on a failed assertion.
  config.system.build.toplevel =
    if failed != []
    then throw "\nFailed assertions:\n${lib.concatMapStringsSep "\n" (m: "- ${m}") failed}"
    else
      pkgs.runCommand "nixos-system-${config.system.name}-${lib.trivial.release}" {
        kernelModules = config.boot.kernelModules;
        kernelParams = config.boot.kernelParams;
        fileSystems = builtins.toJSON config.fileSystems;
        extraHosts = config.networking.extraHosts;
        systemPackages = config.environment.systemPackages;
        units = builtins.attrNames config.systemd.services;
        etc = builtins.attrNames config.environment.etc;
      } "the NixOS system (recorded, not built)";
}
