# Stand-in for nixpkgs' nixos/modules/virtualisation/qemu-vm.nix (and profiles/qemu-guest.nix,
# which it imports): its options that the project's modules and the test framework set or read
# (types and defaults as there), its definitions that meet the project's, and system.build.vm
# with bin/run-<system.name>-vm, whose start script is laid out as nixpkgs' own `startVM`
# (recorded as `startScript` on the vm derivation):
#
#   - the shares, as there: `virtualisation.sharedDirectories` holds nix-store (when
#     mountHostNixStore, the default unless useNixStoreImage or useBootLoader), xchg and shared
#     (always); each is a `-virtfs` on the command line and a 9p entry of `fileSystems`, mounted
#     at boot (neededForBoot). QEMU refuses to migrate or save a machine while a 9p export is
#     mounted, which the vmcheck guest module asserts against (vmcheck.migrates);
#   - the command line: qemu-common's binary (`-machine type=q35,accel=kvm:tcg -cpu max` on
#     x86_64), -name, -m, -smp, `-device virtio-rng-pci`, qemu.networkingOptions (the user-mode
#     NIC with "$QEMU_NET_OPTS"), the -virtfs shares, the drives (root image, store image, empty
#     disks), then qemu.options, then $QEMU_OPTS and "$@". Kernel, initrd and kernel command line
#     are not written into the script but are qemu.options (directBoot), as there:
#     `-kernel ${NIXPKGS_QEMU_KERNEL_<name>:-.../kernel}`, `-initrd`, and `-append` with
#     init=, regInfo=, the consoles (serial then tty0, reversed without graphics so the serial
#     port is the last, primary, one) and $QEMU_KERNEL_PARAMS;
#   - empty disks (`emptyDiskImages`: sizes in MiB) are created by the script as
#     empty<i>.qcow2 and attached as virtio-blk drives without a serial.
{
  config,
  lib,
  pkgs,
  options,
  ...
}: let
  inherit (lib) mkOption types mkIf mkMerge;
  cfg = config.virtualisation;
  hostPkgs = cfg.host.pkgs;
  qemu = cfg.qemu.package;
  positive = default:
    mkOption {
      type = types.ints.positive;
      inherit default;
    };
  bool = default:
    mkOption {
      type = types.bool;
      inherit default;
    };

  # nixos/lib/qemu-common.nix
  qemuBinary =
    if pkgs.stdenv.hostPlatform.isx86
    then "${qemu}/bin/qemu-system-x86_64 -machine type=q35,accel=kvm:tcg -cpu max"
    else "${qemu}/bin/qemu-system-aarch64 -machine virt,gic-version=max,accel=kvm:tcg -cpu max";
  qemuSerialDevice =
    if pkgs.stdenv.hostPlatform.isx86
    then "ttyS0"
    else "ttyAMA0";

  toplevel = config.system.build.toplevel;
  consoles = lib.concatMapStringsSep " " (c: "console=${c}") cfg.qemu.consoles;
  # Every character that is not a letter or digit becomes `_`, as qemu-vm.nix's
  # sanitizeShellIdent does for the kernel's environment variable.
  sanitizeShellIdent = s:
    lib.concatStrings (map (c:
      if builtins.match "[A-Za-z0-9]" c != null
      then c
      else "_") (lib.stringToCharacters s));
  regInfo = hostPkgs.writeText "closure-info" (builtins.toJSON cfg.additionalPaths);

  driveOpts = {
    options = {
      file = mkOption {type = types.str;};
      driveExtraOpts = mkOption {
        type = types.attrsOf types.str;
        default = {};
      };
      deviceExtraOpts = mkOption {
        type = types.attrsOf types.str;
        default = {};
      };
      name = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
    };
  };
  mkOpts = opts: lib.concatStringsSep "," (lib.mapAttrsToList (k: v: "${k}=${toString v}") opts);
  driveCmdline = idx: drive: let
    drvId = "drive${toString idx}";
  in "-drive ${mkOpts (drive.driveExtraOpts
    // {
      index = idx;
      id = drvId;
      "if" = "none";
      inherit (drive) file;
    })} -device virtio-blk-pci,${mkOpts (drive.deviceExtraOpts // {drive = drvId;})}";

  startScript = ''
    #! ${hostPkgs.runtimeShell}

    export PATH=${lib.makeBinPath [hostPkgs.coreutils]}''${PATH:+:}$PATH

    set -e

    NIX_DISK_IMAGE=$(readlink -f "''${NIX_DISK_IMAGE:-${toString cfg.diskImage}}") || test -z "$NIX_DISK_IMAGE"

    if test -n "$NIX_DISK_IMAGE" && ! test -e "$NIX_DISK_IMAGE"; then
        ${qemu}/bin/qemu-img create -f qcow2 "$NIX_DISK_IMAGE" "1024M"
    fi

    # Create a directory for storing temporary data of the running VM.
    if [ -z "$TMPDIR" ] || [ -z "$USE_TMPDIR" ]; then
        TMPDIR=$(mktemp -d nix-vm.XXXXXXXXXX --tmpdir)
    fi

    ${lib.optionalString cfg.useNixStoreImage ''
      echo "Creating Nix store image..."
      # (the closure of system.build.toplevel as an erofs image in "$TMPDIR"/store.img)
    ''}

    # Create a directory for exchanging data with the VM.
    mkdir -p "$TMPDIR/xchg"

    cd "$TMPDIR"

    ${lib.concatStrings (lib.imap0 (idx: size: ''
        test -e "empty${toString idx}.qcow2" || ${qemu}/bin/qemu-img create -f qcow2 "empty${toString idx}.qcow2" "${toString size}M"
      '')
      cfg.emptyDiskImages)}

    # Start QEMU.
    exec ${qemuBinary} \
        -name ${config.system.name} \
        -m ${toString cfg.memorySize} \
        -smp ${toString cfg.cores} \
        -device virtio-rng-pci \
        ${lib.concatStringsSep " " cfg.qemu.networkingOptions} \
        ${lib.concatStringsSep " \\\n    " (lib.mapAttrsToList (tag: share: "-virtfs local,path=${share.source},security_model=${share.securityModel},mount_tag=${tag}") cfg.sharedDirectories)} \
        ${lib.concatStringsSep "\\\n    " (lib.imap1 driveCmdline cfg.qemu.drives)} \
        ${lib.concatStringsSep " \\\n    " cfg.qemu.options} \
        $QEMU_OPTS \
        "$@"
  '';
in {
  options = {
    virtualisation = {
      memorySize = positive 1024;
      cores = positive 1;
      msize = positive 16384;
      diskImage = mkOption {
        type = types.nullOr types.str;
        default = "./${config.system.name}.qcow2";
      };
      emptyDiskImages = mkOption {
        type = types.listOf types.ints.positive;
        default = [];
      };
      graphics = bool true;
      vlans = mkOption {
        type = types.listOf types.ints.unsigned;
        default =
          if cfg.interfaces == {}
          then [1]
          else [];
      };
      interfaces = mkOption {
        default = {};
        type = types.attrsOf (types.submodule {
          options.vlan = mkOption {type = types.ints.unsigned;};
          options.assignIP = bool false;
        });
      };
      sharedDirectories = mkOption {
        default = {};
        type = types.attrsOf (types.submodule {
          options.source = mkOption {type = types.str;};
          options.target = mkOption {type = types.path;};
          options.securityModel = mkOption {
            type = types.enum ["passthrough" "mapped-xattr" "mapped-file" "none"];
            default = "mapped-xattr";
          };
        });
      };
      additionalPaths = mkOption {
        type = types.listOf types.path;
        default = [];
      };
      useNixStoreImage = bool false;
      mountHostNixStore = bool (!cfg.useNixStoreImage && !cfg.useBootLoader);
      writableStore = bool cfg.mountHostNixStore;
      useBootLoader = bool false;
      useDefaultFilesystems = bool true;
      directBoot = {
        enable = bool (!cfg.useBootLoader);
        initrd = mkOption {
          type = types.str;
          default = "${config.system.build.initialRamdisk}/${config.system.boot.loader.initrdFile}";
        };
      };
      # `options.fileSystems`, as there: the VM's file systems, which qemu-vm.nix puts over
      # the configuration's own (mkVMOverride).
      fileSystems = options.fileSystems;
      host.pkgs = mkOption {
        # options.nixpkgs.pkgs.type there: a package set.
        type = types.pkgs;
        default = pkgs;
      };
      qemu = {
        package = mkOption {
          type = types.package;
          default = hostPkgs.qemu_kvm;
        };
        options = mkOption {
          type = types.listOf types.str;
          default = [];
        };
        consoles = mkOption {
          type = types.listOf types.str;
          default = let
            consoles = ["${qemuSerialDevice},115200n8" "tty0"];
          in
            if cfg.graphics
            then consoles
            else lib.reverseList consoles;
        };
        networkingOptions = mkOption {
          type = types.listOf types.str;
          default = [];
        };
        drives = mkOption {
          type = types.listOf (types.submodule driveOpts);
        };
        guestAgent.enable = bool true;
        virtioKeyboard = bool true;
      };
    };

    networking.primaryIPAddress = mkOption {
      type = types.str;
      default = "";
    };
  };

  config = {
    # profiles/qemu-guest.nix
    boot.initrd.availableKernelModules = ["virtio_net" "virtio_pci" "virtio_mmio" "virtio_blk" "virtio_scsi" "9p" "9pnet_virtio"];
    boot.initrd.kernelModules = ["virtio_balloon" "virtio_console" "virtio_rng" "virtio_gpu"];

    virtualisation.additionalPaths = [toplevel];

    virtualisation.sharedDirectories = {
      nix-store = mkIf cfg.mountHostNixStore {
        source = builtins.storeDir;
        target = "/nix/.ro-store";
        securityModel = "none";
      };
      xchg = {
        source = ''"$TMPDIR"/xchg'';
        securityModel = "none";
        target = "/tmp/xchg";
      };
      shared = {
        source = ''"''${SHARED_DIR:-$TMPDIR/xchg}"'';
        target = "/tmp/shared";
        securityModel = "none";
      };
    };

    virtualisation.qemu.networkingOptions = [
      "-net nic,netdev=user.0,model=virtio"
      "-netdev user,id=user.0,\"$QEMU_NET_OPTS\""
    ];

    virtualisation.qemu.options = mkMerge [
      (mkIf cfg.qemu.virtioKeyboard ["-device virtio-keyboard"])
      (mkIf pkgs.stdenv.hostPlatform.isx86 ["-usb" "-device usb-tablet,bus=usb-bus.0"])
      (mkIf cfg.directBoot.enable [
        "-kernel \${NIXPKGS_QEMU_KERNEL_${sanitizeShellIdent config.system.name}:-${toplevel}/kernel}"
        "-initrd ${cfg.directBoot.initrd}"
        ''-append "$(cat ${toplevel}/kernel-params) init=${toplevel}/init regInfo=${regInfo}/registration ${consoles} $QEMU_KERNEL_PARAMS"''
      ])
      (mkIf (!cfg.graphics) ["-nographic"])
    ];

    virtualisation.qemu.drives = mkMerge [
      (mkIf (cfg.diskImage != null) [
        {
          name = "root";
          file = ''"$NIX_DISK_IMAGE"'';
          driveExtraOpts.cache = "writeback";
          driveExtraOpts.werror = "report";
          deviceExtraOpts.bootindex = "1";
          deviceExtraOpts.serial = "root";
        }
      ])
      (mkIf cfg.useNixStoreImage [
        {
          name = "nix-store";
          file = ''"$TMPDIR"/store.img'';
          deviceExtraOpts.bootindex = "2";
          driveExtraOpts.format = "raw";
        }
      ])
      (lib.imap0 (idx: _: {
          file = "$(pwd)/empty${toString idx}.qcow2";
          driveExtraOpts.werror = "report";
        })
        cfg.emptyDiskImages)
    ];

    fileSystems = mkIf (cfg.fileSystems != {}) (lib.mkVMOverride cfg.fileSystems);

    virtualisation.fileSystems = mkMerge [
      (lib.mapAttrs' (tag: share: {
          name = share.target;
          value = {
            device = tag;
            fsType = "9p";
            neededForBoot = true;
            options =
              ["trans=virtio" "version=9p2000.L" "msize=${toString cfg.msize}" "x-systemd.requires=modprobe@9pnet_virtio.service"]
              ++ lib.optional (tag == "nix-store") "cache=loose";
          };
        })
        cfg.sharedDirectories)
      {
        "/" = mkIf cfg.useDefaultFilesystems (
          if cfg.diskImage == null
          then {
            device = "tmpfs";
            fsType = "tmpfs";
            options = ["mode=755"];
          }
          else {
            device = "/dev/disk/by-label/nixos";
            fsType = "ext4";
          }
        );
        "/nix/store" = mkIf (cfg.useNixStoreImage || cfg.mountHostNixStore) (
          if cfg.writableStore
          then {
            overlay = {
              lowerdir = ["/nix/.ro-store"];
              upperdir = "/nix/.rw-store/upper";
              workdir = "/nix/.rw-store/work";
            };
          }
          else {
            device = "/nix/.ro-store";
            options = ["bind"];
          }
        );
        "/nix/.ro-store" = mkIf cfg.useNixStoreImage {
          device = "/dev/disk/by-label/nix-store";
          fsType = "erofs";
          neededForBoot = true;
          options = ["ro"];
        };
      }
    ];

    services.timesyncd.enable = false;
    services.qemuGuest.enable = cfg.qemu.guestAgent.enable;
    networking.usePredictableInterfaceNames = false;

    system.build.vm =
      hostPkgs.runCommand "nixos-vm" {
        passthru = {inherit startScript;};
        preferLocalBuild = true;
        meta.mainProgram = "run-${config.system.name}-vm";
      } ''
        mkdir -p $out/bin
        ln -s ${toplevel} $out/system
        ln -s ${hostPkgs.writeScript "run-nixos-vm" startScript} $out/bin/run-${config.system.name}-vm
      '';
  };
}
