# The guest contract of ARCHITECTURE.md, for every machine of a vmcheck test:
#   - the QEMU guest agent, answering on the virtio-serial port `org.qemu.guest_agent.0`;
#   - the kernel console on the first serial port (ttyS0: the machines are x86_64);
#   - a static address on each test network, and on qemu-vm's NIC where the driver forwards a port;
#   - each test NIC named by its MAC (udev, in the initrd), as nixpkgs' test network names its
#     own: the driver gives the NIC on vlan V of the machine at A.B.C.H the MAC
#     52:54:00:12:VV:HH (src/qemu.rs, test_mac), nixpkgs 52:54:00:12:VV:<node number>.
#
# The machine is a NixOS VM from nixpkgs' qemu-vm module (`system.build.vm`, whose
# bin/run-<name>-vm the driver runs). The driver brings all of the plumbing through the
# environment of that script, as NixOS's own test driver does: QMP, the serial console, the guest
# agent's port, the test-network NIC and the emulated NVMe disks in $QEMU_OPTS, the loopback
# forward to the target's gRPC port in $QEMU_NET_OPTS. So this module adds no QEMU device of its
# own; it makes the guest use what the driver adds.
{
  config,
  lib,
  modulesPath,
  ...
}: let
  cfg = config.vmcheck;

  # Two lower-case hex digits, as the MACs are written (QEMU and sysfs write them in lower case,
  # and udev compares case-sensitively).
  hex2 = n: let
    digits = "0123456789abcdef";
    digit = d: builtins.substring d 1 digits;
  in
    digit (n / 16) + digit (n - n / 16 * 16);
  hostByte = address: builtins.fromJSON (builtins.head (builtins.match "[0-9]+[.][0-9]+[.][0-9]+[.]([0-9]+)" address));
  # The driver's test_mac (src/qemu.rs): 52:54:00 (QEMU's prefix), 12, the vlan, the host byte.
  testMac = vlan: "52:54:00:12:${hex2 vlan}:${hex2 (hostByte cfg.address)}";
  # The names, vlan by vlan; a rule only where both lists have an entry (the assertion below
  # reports lists of different lengths).
  # The 9p file systems mounted at boot: qemu-vm.nix mounts the host's store, xchg and shared.
  mounted9p = builtins.filter (fs: fs.fsType == "9p" && !(builtins.elem "noauto" fs.options)) (builtins.attrValues config.fileSystems);
  namedNics = lib.imap0 (i: name: {
    inherit name;
    vlan = builtins.elemAt cfg.vlans i;
  }) (lib.take (builtins.length cfg.vlans) cfg.testInterfaces);
in {
  imports = [(modulesPath + "/virtualisation/qemu-vm.nix")];

  options.vmcheck = {
    address = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "192.0.2.1";
      description = ''
        This machine's IPv4 address on the test network. `vmcheck.lib.makeTest` sets it (and
        writes the same address into the driver configuration, so the two always agree).
      '';
    };

    prefixLength = lib.mkOption {
      type = lib.types.ints.between 1 32;
      default = 24;
      description = "Prefix length of the test network (the default subnet is 192.0.2.0/24).";
    };

    vlans = lib.mkOption {
      type = lib.types.listOf (lib.types.ints.between 0 255);
      default = [1];
      description = ''
        The test networks (vlans) the machine is on, in the order of the scenario's vlans: the
        driver adds one NIC per vlan, with the MAC 52:54:00:12:<vlan>:<last byte of address>
        (in hex). The flake's checks set this from the scenario.
      '';
    };

    testInterfaces = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = lib.imap1 (i: _: "eth${toString i}") cfg.vlans;
      defaultText = lib.literalExpression ''[ "eth1" "eth2" ... ] (one per entry of vmcheck.vlans)'';
      description = ''
        The guest's names for the driver's NICs, one per entry of `vlans`, in the same order;
        each gets `address`. udev names each NIC by its MAC in the initrd, as nixpkgs' test
        network does (nixos/lib/testing/network.nix), so the names do not depend on the order
        in which the kernel finds the NICs. qemu-vm.nix turns predictable interface names off and
        its own user-mode NIC is `eth0`.
      '';
    };

    migrates = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Whether the scenario live-migrates this machine, or saves it to a file and restores it.
        QEMU refuses both while a 9p export is mounted in the guest, and nixpkgs' qemu-vm.nix
        mounts three (the host's store, xchg and shared), so an assertion then requires that no
        9p file system is mounted. `vmcheck.lib.makeTest` sets it for the machines of vmcheck's
        own scenarios that migrate (the scenario list, nix/scenarios.json); the flake's checks
        leave those scenarios out.
      '';
    };

    controlNetwork = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Whether the driver reaches a service of this machine through qemu-vm's user-mode NIC
        (`eth0`): it then moves that network to 198.51.100.0/24 and forwards a loopback port to
        198.51.100.15, which `eth0` gets. The driver does this for the target role only (the
        target module sets it); other machines leave `eth0` unconfigured.
      '';
    };
  };

  config = {
    assertions = [
      {
        assertion = config.services.qemuGuest.enable;
        message = ''
          vmcheck: the driver runs every command through the QEMU guest agent, but it is off here
          (services.qemuGuest.enable is false: virtualisation.qemu.guestAgent.enable = false?).
          Leave virtualisation.qemu.guestAgent.enable at its default, true.
        '';
      }
      {
        assertion = !(cfg.controlNetwork && builtins.elem "eth0" cfg.testInterfaces);
        message = "vmcheck.testInterfaces holds eth0, qemu-vm's user-mode NIC, which carries the driver's control forward here; the test NICs are eth1, eth2, ...";
      }
      {
        assertion = builtins.length cfg.testInterfaces == builtins.length cfg.vlans;
        message = "vmcheck.testInterfaces names ${toString (builtins.length cfg.testInterfaces)} interface(s) ${builtins.toJSON cfg.testInterfaces} for ${toString (builtins.length cfg.vlans)} vlan(s) ${builtins.toJSON cfg.vlans}: one name per vlan, in the same order";
      }
      {
        assertion = lib.unique cfg.testInterfaces == cfg.testInterfaces;
        message = "vmcheck.testInterfaces names an interface twice: ${builtins.toJSON cfg.testInterfaces}";
      }
      {
        assertion = cfg.migrates -> mounted9p == [];
        message = ''
          vmcheck: the scenario migrates this machine (vmcheck.migrates: live migration, or save
          and restore), but QEMU refuses to migrate a machine while a 9p export is mounted, and
          this one mounts ${lib.concatMapStringsSep ", " (fs: "${fs.mountPoint} (9p tag ${fs.device})") mounted9p}
          (nixpkgs' qemu-vm.nix shares the host's store, xchg and shared over 9p). Run this
          scenario on vmcheck's default images, or take the mounts away on this machine: the
          store from an image (virtualisation.useNixStoreImage = true) and no shared directories
          (virtualisation.sharedDirectories = lib.mkForce { }; vmcheck's driver copies files
          through the guest agent, not through them). The latter has not been tried with nixpkgs.
        '';
      }
      {
        assertion = cfg.address != null;
        message = ''
          vmcheck.address is not set: a vmcheck guest needs its address on the test network.
          vmcheck.lib.makeTest sets it for every node; set it yourself when you use
          nixosModules.guest on its own (for example vmcheck.address = "192.0.2.1";).
        '';
      }
    ];

    # The driver's exec, file and memory-stats channel: qemu-vm.nix enables the agent's service
    # (services.qemuGuest.enable = virtualisation.qemu.guestAgent.enable, default true), whose
    # unit starts when udev sees the virtio port org.qemu.guest_agent.0 the driver adds to
    # $QEMU_OPTS. This module does not set services.qemuGuest.enable itself: a second definition
    # would conflict with qemu-vm.nix's the moment guestAgent.enable is false, with an error about
    # conflicting values instead of the assertion above, which says what is wrong.
    # The agent's own PATH: the system's, as in a login shell, so `nvme`, `fio` and `lsblk` are
    # found whichever PATH guest-exec searches, the agent's or the one in the environment the
    # driver passes (src/qga.rs, GUEST_ENV, which holds /run/current-system/sw/bin too).
    systemd.services.qemu-guest-agent.path = ["/run/current-system/sw"];

    virtualisation = {
      # QEMU's `pc` machine, as the driver boots its default images (`-M pc`): the scenarios'
      # PCI hot-plug and the driver's KVM probe assume it. nixpkgs' qemu-common.nix starts
      # x86_64 machines with `qemu-kvm` (whose default is `pc`) in some releases and with
      # `-machine type=q35` in others, where devices on the root bus cannot be hot-unplugged;
      # these options come after it on the start script's command line, and QEMU's last
      # `-machine type=` wins.
      qemu.options = ["-machine type=pc"];
      # No display: the driver captures the serial console, and the build sandbox has no screen.
      # With graphics off, qemu-vm.nix makes the serial port the kernel's primary console.
      graphics = lib.mkDefault false;
      # A tmpfs root: nothing is written next to the start script, every run boots fresh, and two
      # runs side by side share no disk image.
      diskImage = lib.mkDefault null;
    };

    # Each test NIC by its MAC, in the initrd (where qemu-guest.nix loads virtio_net), as
    # nixpkgs' test network names its own (nixos/lib/testing/network.nix).
    boot.initrd.services.udev.rules = lib.mkIf (cfg.address != null) (lib.concatMapStrings (nic: ''
        SUBSYSTEM=="net",ACTION=="add",ATTR{address}=="${testMac nic.vlan}",NAME="${nic.name}"
      '')
      namedNics);

    # Kernel messages (nvme connect, nvmet, I/O errors) on the console, so the driver's log shows
    # them as `<machine> # ...` lines.
    boot.consoleLogLevel = lib.mkDefault 7;

    networking = {
      useDHCP = lib.mkDefault false;
      # One definition per interface through mkMerge, so that any interface names (eth0 among
      # them) make no duplicate attribute.
      interfaces = lib.mkMerge (
        [
          # qemu-vm's user-mode NIC, when the driver forwards a port to it: its $QEMU_NET_OPTS
          # moves the network to documentation addresses (net=198.51.100.0/24, RFC 5737) and
          # forwards to .15 there (src/qemu.rs CONTROL_NET, CONTROL_GUEST_ADDR). Static: no DHCP.
          (lib.mkIf cfg.controlNetwork {
            eth0.ipv4.addresses = lib.mkDefault [
              {
                address = "198.51.100.15";
                prefixLength = 24;
              }
            ];
          })
        ]
        ++ map (name: {
          ${name}.ipv4.addresses = lib.optional (cfg.address != null) {
            inherit (cfg) address prefixLength;
          };
        })
        cfg.testInterfaces
      );
      # A test network that only the run's own machines are on; nvmet ports are chosen at run time.
      firewall.enable = lib.mkDefault false;
    };

    # Smaller closure, faster builds and boots.
    documentation.enable = lib.mkDefault false;
    system.stateVersion = lib.mkDefault lib.trivial.release;
  };
}
