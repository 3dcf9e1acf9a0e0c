package export

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Folded writes folded stacks ("root;...;leaf value", one line per distinct
// stack) of one sample type of the pprof profile: in.Sample, default
// "blocking".
func Folded(w io.Writer, in *Input) error {
	p, err := Profile(in)
	if err != nil {
		return err
	}
	name := in.Sample
	if name == "" {
		name = "blocking"
	}
	idx := -1
	var names []string
	for i, st := range p.SampleType {
		names = append(names, st.Type)
		if st.Type == name {
			idx = i
		}
	}
	if idx < 0 {
		return fmt.Errorf("folded: %w %q (want one of %s)", ErrFormat, name, strings.Join(names, ", "))
	}
	sums := map[string]int64{}
	for _, s := range p.Sample {
		v := s.Value[idx]
		if v == 0 {
			continue
		}
		parts := make([]string, 0, len(s.Location))
		for i := len(s.Location) - 1; i >= 0; i-- {
			for _, ln := range s.Location[i].Line {
				parts = append(parts, strings.ReplaceAll(ln.Function.Name, ";", ":"))
			}
		}
		sums[strings.Join(parts, ";")] += v
	}
	keys := make([]string, 0, len(sums))
	for k := range sums {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	bw := bufio.NewWriter(w)
	for _, k := range keys {
		fmt.Fprintf(bw, "%s %d\n", k, sums[k])
	}
	return bw.Flush()
}
