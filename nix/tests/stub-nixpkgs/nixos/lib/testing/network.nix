# Stand-in for nixpkgs' nixos/lib/testing/network.nix: the test network. Nodes are numbered
# 1, 2, ... in the order of their sorted names; each vlan of `virtualisation.vlans` is an
# interface eth1, eth2, ... (then those of `virtualisation.interfaces`), a NIC
# `-device virtio-net-pci,netdev=vlanI,mac=52:54:00:12:<vlan>:<node number>` on the vlan's VDE
# switch, named by that MAC with a udev rule in the initrd, with the address
# 192.168.<vlan>.<node number>/24; the first one is the node's primary address, which every
# node's /etc/hosts (networking.extraHosts) gives with the node's host name (its name in
# `nodes`).
{
  config,
  lib,
  ...
}: let
  inherit (lib) attrNames concatMapStrings forEach head listToAttrs mkDefault mkOption nameValuePair optionalString range types zipLists zipListsWith;

  nodeNumbers = listToAttrs (zipListsWith nameValuePair (attrNames config.nodes) (range 1 254));

  # nixos/lib/qemu-common.nix (the MAC in lower case, as network.nix matches it).
  zeroPad = n: let
    digits = "0123456789abcdef";
  in
    if n > 255
    then throw "Can't have more than 255 nets or nodes!"
    else builtins.substring (n / 16) 1 digits + builtins.substring (n - n / 16 * 16) 1 digits;
  qemuNicMac = net: machine: "52:54:00:12:${zeroPad net}:${zeroPad machine}";
  qemuNICFlags = nic: net: machine: [
    "-device virtio-net-pci,netdev=vlan${toString nic},mac=${qemuNicMac net machine}"
    ''-netdev vde,id=vlan${toString nic},sock="$QEMU_VDE_SOCKET_${toString net}"''
  ];

  networkModule = {
    config,
    nodes,
    ...
  }: let
    nodeNumber = config.virtualisation.test.nodeNumber;
    vlansNumbered = forEach (zipLists config.virtualisation.vlans (range 1 255)) (v: {
      name = "eth${toString v.snd}";
      vlan = v.fst;
      assignIP = true;
    });
    explicitInterfaces = lib.mapAttrsToList (n: v: v // {name = n;}) config.virtualisation.interfaces;
    interfaces = vlansNumbered ++ explicitInterfaces;
    interfacesNumbered = zipLists interfaces (range 1 255);
    ipInterfaces = forEach (builtins.filter (i: i.assignIP) interfaces) (i:
      nameValuePair i.name {
        ipv4.addresses = [
          {
            address = "192.168.${toString i.vlan}.${toString nodeNumber}";
            prefixLength = 24;
          }
        ];
      });
    qemuOptions = lib.flatten (forEach interfacesNumbered ({
      fst,
      snd,
    }:
      qemuNICFlags snd fst.vlan nodeNumber));
    udevRules = forEach interfaces (i: ''SUBSYSTEM=="net",ACTION=="add",ATTR{address}=="${qemuNicMac i.vlan nodeNumber}",NAME="${i.name}"'');
  in {
    key = "network-interfaces";
    config = {
      networking.hostName = mkDefault config.virtualisation.test.nodeName;
      networking.interfaces = listToAttrs ipInterfaces;
      networking.primaryIPAddress = optionalString (ipInterfaces != []) (head (head ipInterfaces).value.ipv4.addresses).address;
      networking.extraHosts = concatMapStrings (m: let
        c = nodes.${m};
      in
        optionalString (c.networking.primaryIPAddress != "") (
          "${c.networking.primaryIPAddress} "
          + optionalString (c.networking.domain != null) "${c.networking.hostName}.${c.networking.domain} "
          + "${c.networking.hostName}\n"
        )) (attrNames nodes);
      virtualisation.qemu.options = qemuOptions;
      boot.initrd.services.udev.rules = concatMapStrings (x: x + "\n") udevRules;
    };
  };

  nodeNumberModule = {
    config,
    name,
    ...
  }: {
    options.virtualisation.test = {
      nodeName = mkOption {
        type = types.str;
        default = name;
      };
      nodeNumber = mkOption {
        type = types.int;
        readOnly = true;
        default = nodeNumbers.${config.virtualisation.test.nodeName};
      };
    };
  };
in {
  config.extraBaseModules.imports = [networkModule nodeNumberModule];
}
