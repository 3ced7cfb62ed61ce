//! Typed wrappers of the guest tools: fio and nvme-cli, from their JSON output.
