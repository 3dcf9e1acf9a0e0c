package ebpf

// The BPF objects are generated and committed, so that building gmpwatch
// needs no clang. Regenerate with `go generate ./ebpf` (clang-19, libbpf-dev).
//
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -target amd64 -type gmp_event gmpwatch gmpwatch.bpf.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-19 -target amd64 delivery delivery.bpf.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
