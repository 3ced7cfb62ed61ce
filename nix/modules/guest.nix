# The guest contract of DESIGN.md, for every machine of a vmcheck test:
#   - the QEMU guest agent, answering on the virtio-serial port `org.qemu.guest_agent.0`;
#   - the kernel console on the first serial port (ttyS0 on x86_64, ttyAMA0 on aarch64);
#   - a static address on the test network.
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

    testInterface = lib.mkOption {
      type = lib.types.str;
      default = "eth1";
      description = ''
        The guest's name for the NIC the driver adds for the test network. qemu-vm.nix turns
        predictable interface names off and puts its own user-mode NIC first, on `eth0`; the
        driver's NIC comes after it on the QEMU command line, so the guest calls it `eth1`.
      '';
    };
  };

  config = {
    assertions = [
      {
        assertion = cfg.address != null;
        message = ''
          vmcheck.address is not set: a vmcheck guest needs its address on the test network.
          vmcheck.lib.makeTest sets it for every node; set it yourself when you use
          nixosModules.guest on its own (for example vmcheck.address = "192.0.2.1";).
        '';
      }
    ];

    # The driver's exec, file and memory-stats channel. The service's unit starts when udev sees
    # the virtio port org.qemu.guest_agent.0, which the driver adds to $QEMU_OPTS.
    # (virtualisation.qemu.guestAgent.enable is left at its default, true: in qemu-vm.nix it adds
    # no QEMU device, it only sets services.qemuGuest.enable, so turning it off would turn the
    # agent off.)
    services.qemuGuest.enable = true;
    # guest-exec runs commands with the agent's own environment: give it the system's PATH, so
    # `nvme`, `fio` and `lsblk` are found as in a login shell.
    systemd.services.qemu-guest-agent.path = ["/run/current-system/sw"];

    virtualisation = {
      # No display: the driver captures the serial console, and the build sandbox has no screen.
      # With graphics off, qemu-vm.nix makes the serial port the kernel's primary console.
      graphics = lib.mkDefault false;
      # A tmpfs root: nothing is written next to the start script, every run boots fresh, and two
      # runs side by side share no disk image.
      diskImage = lib.mkDefault null;
    };

    # Kernel messages (nvme connect, nvmet, I/O errors) on the console, so the driver's log shows
    # them as `<machine> # ...` lines.
    boot.consoleLogLevel = lib.mkDefault 7;

    networking = {
      # eth0 is qemu-vm's user-mode NIC. The driver's $QEMU_NET_OPTS moves it to documentation
      # addresses (net=198.51.100.0/24, RFC 5737) and forwards a loopback port to the guest's
      # .15 there (src/qemu.rs CONTROL_NET, CONTROL_GUEST_ADDR). Static: no DHCP wait.
      useDHCP = lib.mkDefault false;
      interfaces.eth0.ipv4.addresses = lib.mkDefault [
        {
          address = "198.51.100.15";
          prefixLength = 24;
        }
      ];
      interfaces.${cfg.testInterface}.ipv4.addresses = lib.optional (cfg.address != null) {
        inherit (cfg) address prefixLength;
      };
      # A test network that only the run's own machines are on; nvmet ports are chosen at run time.
      firewall.enable = lib.mkDefault false;
    };

    # Smaller closure, faster builds and boots.
    documentation.enable = lib.mkDefault false;
    system.stateVersion = lib.mkDefault lib.trivial.release;
  };
}
