// Package procmem reads another process: its executable, its memory map and
// its memory, through /proc/PID/exe, /proc/PID/maps and /proc/PID/mem. It
// never writes and never stops the process.
//
// Reading another process's memory needs ptrace access to it: root, or
// CAP_SYS_PTRACE, or being its parent under the default Yama policy.
package procmem

import (
	"bufio"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Sentinel errors.
var (
	ErrNoProcess  = errors.New("no such process")
	ErrPermission = errors.New("permission denied")
)

// classify wraps err with a sentinel that callers can match.
func classify(pid int, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ESRCH):
		return fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return fmt.Errorf("pid %d: %w (run as root)", pid, ErrPermission)
	}
	return fmt.Errorf("pid %d: %w", pid, err)
}

// Exists reports whether the process exists.
func Exists(pid int) bool {
	if pid <= 0 {
		return false
	}
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// ExePath returns a path that opens the process's executable from this mount
// namespace: the /proc/PID/exe magic link, which resolves even when the file
// lives in another mount namespace (a container) or was replaced on disk.
func ExePath(pid int) (string, error) {
	p := "/proc/" + strconv.Itoa(pid) + "/exe"
	if _, err := os.Stat(p); err != nil {
		if !Exists(pid) {
			return "", classify(pid, fs.ErrNotExist)
		}
		return "", classify(pid, err)
	}
	return p, nil
}

// ExeName returns the executable's path as the process sees it (readlink of
// /proc/PID/exe), for display.
func ExeName(pid int) string {
	s, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return ""
	}
	return s
}

// Mapping is one line of /proc/PID/maps.
type Mapping struct {
	Start, End uint64
	Perms      string // "r-xp"
	Offset     uint64
	Dev        string // "fd:01"
	Inode      uint64
	Path       string
}

// Maps reads /proc/PID/maps.
func Maps(pid int) ([]Mapping, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		return nil, classify(pid, err)
	}
	defer f.Close()
	var out []Mapping
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m, ok := parseMapsLine(sc.Text())
		if ok {
			out = append(out, m)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, classify(pid, err)
	}
	return out, nil
}

func parseMapsLine(line string) (Mapping, bool) {
	f := strings.Fields(line)
	if len(f) < 5 {
		return Mapping{}, false
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return Mapping{}, false
	}
	var m Mapping
	var err1, err2, err3, err4 error
	m.Start, err1 = strconv.ParseUint(lo, 16, 64)
	m.End, err2 = strconv.ParseUint(hi, 16, 64)
	m.Offset, err3 = strconv.ParseUint(f[2], 16, 64)
	m.Inode, err4 = strconv.ParseUint(f[4], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return Mapping{}, false
	}
	m.Perms, m.Dev = f[1], f[3]
	if len(f) > 5 {
		m.Path = strings.Join(f[5:], " ")
	}
	return m, true
}

// LoadBias returns what to add to a link-time address of the process's
// executable to get its runtime address: 0 for a non-PIE binary, the load
// address for PIE. ef is the executable as opened from ExePath.
func LoadBias(pid int, ef *elf.File) (uint64, error) {
	if ef.Type != elf.ET_DYN {
		return 0, nil
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/"+strconv.Itoa(pid)+"/exe", &st); err != nil {
		return 0, classify(pid, err)
	}
	maps, err := Maps(pid)
	if err != nil {
		return 0, err
	}
	for _, m := range maps {
		if m.Inode != st.Ino || !strings.Contains(m.Perms, "x") {
			continue
		}
		for _, p := range ef.Progs {
			if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && m.Offset >= p.Off && m.Offset < p.Off+p.Filesz {
				vaddr := p.Vaddr + (m.Offset - p.Off)
				return m.Start - vaddr, nil
			}
		}
	}
	return 0, fmt.Errorf("pid %d: executable mapping not found in /proc/%d/maps", pid, pid)
}

// Reader reads a process's memory through /proc/PID/mem: one pread per call,
// so callers read in large batches.
type Reader struct {
	pid int
	f   *os.File
}

// Open opens the memory of process pid for reading.
func Open(pid int) (*Reader, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/mem")
	if err != nil {
		return nil, classify(pid, err)
	}
	return &Reader{pid: pid, f: f}, nil
}

// PID returns the process ID.
func (r *Reader) PID() int { return r.pid }

// ReadAt reads len(b) bytes at runtime address addr. A short read returns
// the bytes read and an error.
func (r *Reader) ReadAt(b []byte, addr uint64) (int, error) {
	if addr > 1<<63 {
		return 0, fmt.Errorf("read %#x: address out of range", addr)
	}
	n, err := r.f.ReadAt(b, int64(addr))
	if err != nil {
		if !Exists(r.pid) {
			return n, classify(r.pid, fs.ErrNotExist)
		}
		return n, fmt.Errorf("read %d bytes at %#x: %w", len(b), addr, err)
	}
	return n, nil
}

// Uint64 reads a little-endian uint64 at addr.
func (r *Reader) Uint64(addr uint64) (uint64, error) {
	var b [8]byte
	if _, err := r.ReadAt(b[:], addr); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// Uint32 reads a little-endian uint32 at addr.
func (r *Reader) Uint32(addr uint64) (uint32, error) {
	var b [4]byte
	if _, err := r.ReadAt(b[:], addr); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

// Close closes the reader.
func (r *Reader) Close() error { return r.f.Close() }
