#!/usr/bin/env python3
"""Write the nvme-cli-2.3_* and nvme-cli-2.11_* fixtures: the shapes nvme-cli prints, not captures.

This host has no NVMe devices and no nvme-fabrics module, so the JSON is built here with the same
keys, key order and value types as nvme-cli 2.3's source (fabrics.c json_discovery_log and
json_connect_msg, nvme-print.c json_simple_list/json_list_item, libnvme 1.3's nvmf_*_str tables),
and printed by the host's json-c (libjson-c5, the library nvme-cli links) with nvme-cli's flags,
JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE, then "\\n" as nvme-cli prints it.
Values are what a Linux 6.1 nvmet target on the test network would report: port 1 at
192.0.2.1:4420, one 512 MiB namespace. The first line of each file says it is a shape; replace
the files with captures from a VM (and drop that line) when there is one.
"""
import ctypes as C

MARK = "# shape from nvme-cli 2.3 source; to be replaced with VM capture\n"
MARK_2_11 = "# shape from nvme-cli 2.11 source (nvme-print-json.c json_detail_list, json_discovery_log, json_connect_msg)\n"
PRETTY, NOSLASHESCAPE = 1 << 1, 1 << 4

j = C.CDLL("libjson-c.so.5")
for name, res, args in [
    ("json_object_new_object", C.c_void_p, []),
    ("json_object_new_array", C.c_void_p, []),
    ("json_object_new_string", C.c_void_p, [C.c_char_p]),
    ("json_object_new_int", C.c_void_p, [C.c_int32]),
    ("json_object_new_uint64", C.c_void_p, [C.c_uint64]),
    ("json_object_object_add", C.c_int, [C.c_void_p, C.c_char_p, C.c_void_p]),
    ("json_object_array_add", C.c_int, [C.c_void_p, C.c_void_p]),
    ("json_object_to_json_string_ext", C.c_char_p, [C.c_void_p, C.c_int]),
]:
    f = getattr(j, name)
    f.restype, f.argtypes = res, args


def obj(pairs):
    o = j.json_object_new_object()
    for key, kind, value in pairs:
        if kind == "str":
            v = j.json_object_new_string(value.encode())
        elif kind == "int":
            v = j.json_object_new_int(value)
        elif kind == "u64":
            v = j.json_object_new_uint64(value)
        else:
            v = value  # an object or array built already
        j.json_object_object_add(o, key.encode(), v)
    return o


def array(items):
    a = j.json_object_new_array()
    for item in items:
        j.json_object_array_add(a, item)
    return a


def write(path, root, mark=MARK):
    text = j.json_object_to_json_string_ext(root, PRETTY | NOSLASHESCAPE).decode()
    with open(path, "w") as f:
        f.write(mark + text + "\n")


DISC_NQN = "nqn.2014-08.org.nvmexpress.discovery"
SUBNQN = "nqn.2019-05.io.vmcheck:00000000-76b6-4fcf-864d-1027d4038756"


def disc_entry(subtype, subnqn):
    # Linux nvmet: treq defaults to NVMF_TREQ_DISABLE_SQFLOW (4), eflags 0, TCP sectype none.
    return obj([
        ("trtype", "str", "tcp"),
        ("adrfam", "str", "ipv4"),
        ("subtype", "str", subtype),
        ("treq", "str", "not specified, sq flow control disable supported"),
        ("portid", "int", 1),
        ("trsvcid", "str", "4420"),
        ("subnqn", "str", subnqn),
        ("traddr", "str", "192.0.2.1"),
        ("eflags", "str", "none"),
        ("sectype", "str", "none"),
    ])


# nvme discover -t tcp -a 192.0.2.1 -s 4420 -o json: Linux >= 5.17 lists the discovery
# subsystem itself first (subtype 3), then each subsystem on the port.
write("nvme-cli-2.3_discover.json", obj([
    ("genctr", "u64", 2),
    ("records", "raw", array([
        disc_entry("current discovery subsystem", DISC_NQN),
        disc_entry("nvme subsystem", SUBNQN),
    ])),
]))

# nvme list -o json with one namespace (native multipath: a subsystem namespace, nvme0n1).
lba, lbas = 512, 1048576
write("nvme-cli-2.3_list.json", obj([
    ("Devices", "raw", array([obj([
        ("NameSpace", "int", 1),
        ("DevicePath", "str", "/dev/nvme0n1"),
        ("Firmware", "str", "6.1.0-18"),
        ("ModelNumber", "str", "Linux"),
        ("SerialNumber", "str", "9a3f7c21d04e5b68"),
        ("UsedBytes", "u64", lba * lbas),
        ("MaximumLBA", "u64", lbas),
        ("PhysicalSize", "u64", lba * lbas),
        ("SectorSize", "int", lba),
    ])])),
]))

# nvme list -o json with nothing connected (nvme-core loaded).
write("nvme-cli-2.3_list_empty.json", obj([("Devices", "raw", array([]))]))

# nvme connect ... -o json
write("nvme-cli-2.3_connect.json", obj([("device", "str", "nvme0")]))

# nvme disconnect -n NQN prints plain text (fabrics.c nvmf_disconnect).
with open("nvme-cli-2.3_disconnect.txt", "w") as f:
    f.write(MARK + "NQN:%s disconnected %d controller(s)\n" % (SUBNQN, 1))


# nvme-cli 2.11 (libnvme 1.11, what nixpkgs ships): `nvme list -o json` prints the detailed
# format whether or not -v is given (nvme-print-json.c json_print_list_items calls
# json_detail_list only: commit 929f4619a "display only verbose output", reverted after 2.11).
# Hosts, their subsystems, each subsystem's controllers (with their paths) and, under native
# multipath (Debian's and NixOS's kernels), the namespaces under the subsystem, by name. The
# values are those of the 2.3 capture of nvme-cli-2.3_list.json: one 512 MiB nvmet namespace.
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:3d1c6ad0-1f4e-4b8e-9c59-2f7d7c3a5b10"
HOSTID = "3d1c6ad0-1f4e-4b8e-9c59-2f7d7c3a5b10"
CAPTURED_NQN = "nqn.2019-05.io.vmcheck:626210a5-c960-50b7-bcde-50bfb7e8543f"
write("nvme-cli-2.11_list.json", obj([
    ("Devices", "raw", array([obj([
        ("HostNQN", "str", HOSTNQN),
        ("HostID", "str", HOSTID),
        ("Subsystems", "raw", array([obj([
            ("Subsystem", "str", "nvme-subsys1"),
            ("SubsystemNQN", "str", CAPTURED_NQN),
            ("Controllers", "raw", array([obj([
                ("Controller", "str", "nvme1"),
                ("Cntlid", "str", "1"),
                ("SerialNumber", "str", "0c6f912a28281702eb29"),
                ("ModelNumber", "str", "Linux"),
                ("Firmware", "str", "6.1.0-56"),
                ("Transport", "str", "tcp"),
                ("Address", "str", "traddr=192.0.2.1,trsvcid=4420,src_addr=192.0.2.2"),
                ("Slot", "str", ""),
                ("Namespaces", "raw", array([])),
                ("Paths", "raw", array([obj([
                    ("Path", "str", "nvme1c1n1"),
                    ("ANAState", "str", "optimized"),
                ])])),
            ])])),
            ("Namespaces", "raw", array([obj([
                ("NameSpace", "str", "nvme1n1"),
                ("Generic", "str", "ng1n1"),
                ("NSID", "int", 1),
                ("UsedBytes", "u64", lba * lbas),
                ("MaximumLBA", "u64", lbas),
                ("PhysicalSize", "u64", lba * lbas),
                ("SectorSize", "int", lba),
            ])])),
        ])])),
    ])])),
]), MARK_2_11)

# nvme list -o json with nothing connected: the host, no subsystems.
write("nvme-cli-2.11_list_empty.json", obj([
    ("Devices", "raw", array([obj([
        ("HostNQN", "str", HOSTNQN),
        ("HostID", "str", HOSTID),
        ("Subsystems", "raw", array([])),
    ])])),
]), MARK_2_11)

# Discovery and connect: the same keys and order as 2.3 (json_discovery_log, json_connect_msg).
write("nvme-cli-2.11_discover.json", obj([
    ("genctr", "u64", 2),
    ("records", "raw", array([
        disc_entry("current discovery subsystem", DISC_NQN),
        disc_entry("nvme subsystem", CAPTURED_NQN),
    ])),
]), MARK_2_11)
write("nvme-cli-2.11_connect.json", obj([("device", "str", "nvme1")]), MARK_2_11)
