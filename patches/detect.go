package patches

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// labelsRE matches the list in a marker: patch labels joined by commas.
var labelsRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*(=[0-9a-zA-Z.]+)?(,[a-z0-9][a-z0-9-]*(=[0-9a-zA-Z.]+)?)*$`)

// maxMarker bounds the length of a marker's list.
const maxMarker = 4096

// Detect returns the labels of the gmpwatch runtime patches f was built with
// ("preempt-slice=2ms", "probe-points"), or nil when it carries none. It
// finds the marker string that patch build adds to the runtime in the
// binary's allocated, non-executable data sections, so it works on stripped
// (-ldflags=-s -w) and PIE binaries alike.
func Detect(f *elf.File) ([]string, error) {
	prefix := markerPrefix()
	for _, s := range f.Sections {
		if s.Type != elf.SHT_PROGBITS || s.Flags&elf.SHF_ALLOC == 0 || s.Flags&elf.SHF_EXECINSTR != 0 {
			continue
		}
		data, err := readSection(s)
		if err != nil {
			return nil, fmt.Errorf("detect patches: section %s: %w", s.Name, err)
		}
		for off := 0; ; {
			i := bytes.Index(data[off:], prefix)
			if i < 0 {
				break
			}
			start := off + i + len(prefix)
			off = start
			rest := data[start:]
			if len(rest) > maxMarker {
				rest = rest[:maxMarker]
			}
			j := bytes.IndexByte(rest, markerEnd)
			if j <= 0 || !labelsRE.Match(rest[:j]) {
				continue
			}
			return strings.Split(string(rest[:j]), ","), nil
		}
	}
	return nil, nil
}

func readSection(s *elf.Section) ([]byte, error) {
	b, err := s.Data()
	if err == nil {
		return b, nil
	}
	// Data fails on compressed sections it cannot handle; read raw bytes.
	return io.ReadAll(s.Open())
}

// DetectFile opens the ELF file at path and calls Detect.
func DetectFile(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("detect patches: %w", err)
	}
	defer f.Close()
	return Detect(f)
}
