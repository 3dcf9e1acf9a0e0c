// Package plan describes a Go target the way gmpwatch's probes and memory
// readers need it: its Go release, where the runtime's functions and globals
// are, where a uprobe may sit in each function, and how runtime.g, runtime.m,
// runtime.p and runtime.schedt are laid out. A Plan is plain data: it prints
// with `gmpwatch inspect`, is stored in recordings, and is what ebpf/ turns
// into attached probes.
//
// Build a Plan from a binary with FromFile, or from a live process with
// FromProcess, which also reads the load bias and the wait-reason names.
package plan

import (
	"encoding/json"
	"errors"
	"sort"
	"strconv"

	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/layout"
	"github.com/gmpwatch/gmpwatch/analysis/procmem"
)

// Sentinel errors, the same values as the packages that detect them, so
// callers match them with errors.Is whichever layer returned them.
var (
	ErrNotELF             = gobin.ErrNotELF
	ErrNotGo              = gobin.ErrNotGo
	ErrUnsupportedArch    = gobin.ErrUnsupportedArch
	ErrUnsupportedVersion = layout.ErrUnsupportedVersion
	ErrNoLayout           = layout.ErrNoLayout
	ErrNoProcess          = procmem.ErrNoProcess
	ErrPermission         = procmem.ErrPermission
	ErrMissingSymbol      = gobin.ErrNoSymbol
)

// Layout sources.
const (
	LayoutDWARF = "dwarf" // read from the binary's own DWARF
	LayoutTable = "table" // per-release fallback table (stripped binaries)
)

// Plan is everything gmpwatch knows about one target.
type Plan struct {
	Path         string `json:"path"`
	GoVersion    string `json:"go_version"` // as in the build info, "go1.26.8"
	Arch         string `json:"arch"`       // GOARCH
	Stripped     bool   `json:"stripped"`   // no .symtab and no DWARF
	PIE          bool   `json:"pie"`
	CGO          bool   `json:"cgo"`
	ExternalLink bool   `json:"external_link"`
	// Patches lists the gmpwatch runtime patches the binary carries.
	Patches []string `json:"patches,omitempty"`

	LayoutSource string `json:"layout_source"` // LayoutDWARF or LayoutTable
	// LayoutNote says which table was used and what was guessed, if anything.
	LayoutNote string `json:"layout_note,omitempty"`
	// Offsets maps "struct.field" (for example "g.goid") to its byte offset.
	Offsets map[string]int64 `json:"offsets"`
	// Sizes maps a struct name ("g", "m", "p", "schedt") to its size.
	Sizes map[string]int64 `json:"sizes"`

	// Functions maps a runtime function name to where it is.
	Functions map[string]Function `json:"functions"`
	// Globals maps a runtime variable name to its link-time address.
	Globals map[string]Global `json:"globals"`
	// Probes are the attach points, in the order ebpf/ attaches them.
	Probes []Probe `json:"probes"`

	// Filled by FromProcess. Path is then /proc/PID/exe, which opens
	// the executable from any mount namespace; Exe is its name for people.
	PID         int         `json:"pid,omitempty"`
	Exe         string      `json:"exe,omitempty"`
	LoadBias    uint64      `json:"load_bias,omitempty"` // runtime address = link address + LoadBias
	WaitReasons WaitReasons `json:"wait_reasons,omitempty"`
	// WaitReasonSource says where WaitReasons were read: "process" (its
	// memory) or "binary" (the file, relocated; a process stopped at exec
	// is not relocated yet).
	WaitReasonSource string `json:"wait_reason_source,omitempty"`
}

// Function is a runtime function and the place a uprobe sits in it.
type Function struct {
	Address    uint64 `json:"address"`     // link-time entry address
	Size       uint64 `json:"size"`        // bytes
	FileOffset uint64 `json:"file_offset"` // file offset of the entry
	// ProbeOffset is where the probe sits, in bytes from the entry: after the
	// stack check (at its conditional jump, or at the frame push after it),
	// never on the stack-check compare itself.
	ProbeOffset uint64 `json:"probe_offset"`
	ProbeInsn   string `json:"probe_insn"` // the instruction at ProbeOffset, Go syntax
	// Refires is true when the probe sits before the stack check's branch is
	// taken, so a call that grows its stack fires it twice.
	Refires bool `json:"refires"`
	// FramePushed is true when the probe instruction comes after the frame
	// pointer push: the caller's return address is then at 8(SP), not 0(SP).
	FramePushed bool `json:"frame_pushed"`
}

// Global is a runtime variable.
type Global struct {
	Address uint64 `json:"address"` // link-time address
	Size    uint64 `json:"size,omitempty"`
}

// Probe is one uprobe to attach.
type Probe struct {
	// Program names the BPF program that handles this point; the program
	// knows which registers hold what (for example "gopark", "execute",
	// "newproc_runqput").
	Program    string `json:"program"`
	Symbol     string `json:"symbol"`      // the function the instruction is in
	Address    uint64 `json:"address"`     // link-time address of the instruction
	FileOffset uint64 `json:"file_offset"` // where the uprobe attaches
	Insn       string `json:"insn"`        // instruction there, Go syntax
	Refires    bool   `json:"refires"`     // see Function.Refires
	// FramePushed: see Function.FramePushed.
	FramePushed bool `json:"frame_pushed"`
	// Optional probes may be absent without failing an attach.
	Optional bool `json:"optional,omitempty"`
}

// Offset returns Offsets[key] and whether the layout has that field.
func (p *Plan) Offset(key string) (int64, bool) {
	v, ok := p.Offsets[key]
	return v, ok
}

// ProbesFor returns the probes handled by the named program.
func (p *Plan) ProbesFor(program string) []Probe {
	var out []Probe
	for _, pr := range p.Probes {
		if pr.Program == program {
			out = append(out, pr)
		}
	}
	return out
}

// WaitReasons are the names of the runtime's wait reasons, indexed by the
// uint8 stored in g.waitreason. The numbering changes between releases, so
// they are read from the target's runtime.waitReasonStrings.
type WaitReasons []string

// Name returns the name of wait reason i, or "waitReason(i)" if unknown.
func (w WaitReasons) Name(i uint8) string {
	if int(i) < len(w) && w[i] != "" {
		return w[i]
	}
	return "waitReason(" + strconv.Itoa(int(i)) + ")"
}

// MarshalJSON writes wait reasons as an object from index to name.
func (w WaitReasons) MarshalJSON() ([]byte, error) {
	m := make(map[string]string, len(w))
	for i, s := range w {
		m[strconv.Itoa(i)] = s
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads the object written by MarshalJSON.
func (w *WaitReasons) UnmarshalJSON(b []byte) error {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	idx := make([]int, 0, len(m))
	for k := range m {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i > 255 {
			return errors.New("wait_reasons: bad index " + strconv.Quote(k))
		}
		idx = append(idx, i)
	}
	sort.Ints(idx)
	out := WaitReasons{}
	if len(idx) > 0 {
		out = make(WaitReasons, idx[len(idx)-1]+1)
	}
	for _, i := range idx {
		out[i] = m[strconv.Itoa(i)]
	}
	*w = out
	return nil
}
