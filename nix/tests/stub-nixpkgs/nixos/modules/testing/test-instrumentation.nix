# Stand-in for nixpkgs' nixos/modules/testing/test-instrumentation.nix: what it defines that meets
# a node's own modules: the backdoor shell the test driver talks to (a unit on hvc0), no getty on
# the serial console, the test QEMU by default, the kernel's consoles and log level, interface
# names without predictable naming, and the state version at a low priority.
{
  lib,
  pkgs,
  ...
}: {
  systemd.services.backdoor = {
    wantedBy = ["multi-user.target"];
    requires = ["dev-hvc0.device" "dev-ttyS0.device"];
    after = ["dev-hvc0.device" "dev-ttyS0.device"];
    script = "exec bash --norc /dev/hvc0 # (the test driver's root shell)";
    serviceConfig.KillSignal = "SIGHUP";
  };
  systemd.services."serial-getty@ttyS0".enable = false;
  systemd.services."serial-getty@hvc0".enable = false;
  virtualisation.qemu.package = lib.mkDefault pkgs.qemu_test;
  boot.kernelParams = ["console=ttyS0" "console=tty0" "panic=1" "boot.panic_on_fail" "clocksource=acpi_pm"];
  boot.consoleLogLevel = 7;
  networking.usePredictableInterfaceNames = false;
  system.stateVersion = lib.mkOverride 1200 lib.trivial.release;
}
