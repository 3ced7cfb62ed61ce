# Stand-in for nixpkgs' nixos/lib/testing/interactive.nix: `driverInteractive` is the driver of
# the same test run with hostPkgs.qemu and `--interactive` (nixpkgs re-evaluates the test with
# `interactive`'s settings; here driver.nix builds it from the same definitions).
{
  config,
  hostPkgs,
  ...
}: {
  config.passthru.driverInteractive = config.driverFor {
    qemuPackage = hostPkgs.qemu;
    extraDriverArgs = config.extraDriverArgs ++ ["--interactive"];
  };
}
