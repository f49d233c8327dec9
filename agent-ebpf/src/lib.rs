// Empty library target: lets the agent crate list agent-ebpf as a build dependency (for cache
// invalidation) without compiling the eBPF binary for the host.
#![no_std]
