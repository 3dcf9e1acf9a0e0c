package regress

import (
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"

	"golang.org/x/perf/benchfmt"
	"golang.org/x/perf/benchunit"
)

// Formats accepted by Render.
var Formats = []string{"text", "benchstat", "markdown", "junit"}

// Render writes the comparison in a format: text, benchstat, markdown or junit.
func (res *Result) Render(w io.Writer, format string) error {
	switch format {
	case "text", "":
		return res.RenderText(w)
	case "benchstat":
		return res.RenderBenchstat(w)
	case "markdown":
		return res.RenderMarkdown(w)
	case "junit":
		return res.RenderJUnit(w)
	}
	return fmt.Errorf("unknown format %q (want %s)", format, strings.Join(Formats, ", "))
}

// formatValue prints a value with three significant digits and an SI prefix.
func formatValue(v float64, c Class) string {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return fmt.Sprint(v)
	}
	if c == ClassTime {
		return benchunit.Scale(v/1e9, benchunit.Decimal) + "s"
	}
	return benchunit.Scale(v, benchunit.Decimal)
}

func (r *Row) baseString() string {
	return formatValue(r.Base.Center, r.Metric.Class) + " ± " + r.Base.PctRangeString()
}

func (r *Row) newString() string {
	return formatValue(r.New.Center, r.Metric.Class) + " ± " + r.New.PctRangeString()
}

func pct(f float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", f*100), "0"), ".") + "%"
}

// verdict says what the row means for the exit status.
func (r *Row) verdict() string {
	switch {
	case !r.Checked:
		return ""
	case r.Regression:
		return "REGRESSION > " + pct(r.Threshold)
	case r.New.Center <= r.Base.Center || !r.Significant:
		return ""
	case r.HolmAlpha > 0 && r.Cmp.P <= r.HolmAlpha:
		return "worse, within " + pct(r.Threshold)
	default:
		return "~ after Holm correction"
	}
}

func (res *Result) describe(rec *Record, name string) string {
	return fmt.Sprintf("%s: %s (%d runs, %s)", name, strings.Join(rec.Command, " "), len(rec.Runs), rec.Method)
}

func (res *Result) names() (string, string) {
	b, n := res.BaseName, res.NewName
	if b == "" {
		b = "base"
	}
	if n == "" {
		n = "new"
	}
	return b, n
}

// warnings returns benchmath's warnings, deduplicated, in order.
func (res *Result) warnings() []string {
	seen := map[string]bool{}
	var out []string
	add := func(name string, errs []error) {
		for _, e := range errs {
			if s := name + ": " + e.Error(); !seen[s] {
				seen[s] = true
				out = append(out, s)
			}
		}
	}
	for _, r := range res.Rows {
		add(r.Metric.Name, r.Base.Warnings)
		add(r.Metric.Name, r.New.Warnings)
		add(r.Metric.Name, r.Cmp.Warnings)
	}
	return out
}

// Conclusion is the one-line verdict that every format ends with.
func (res *Result) Conclusion() string {
	regs := res.Regressions()
	if len(regs) == 0 {
		return fmt.Sprintf("no regression: %d metrics checked (Mann-Whitney U, Holm-corrected, family-wise alpha %g)", res.Checked, res.Alpha)
	}
	var parts []string
	for _, r := range regs {
		parts = append(parts, fmt.Sprintf("%s %+.2f%% (p=%.3f, threshold %s)", r.Metric.Name, r.DeltaPct, r.Cmp.P, pct(r.Threshold)))
	}
	return "REGRESSION: " + strings.Join(parts, "; ")
}

// RenderText writes a benchstat-style table.
func (res *Result) RenderText(w io.Writer) error {
	bn, nn := res.names()
	var b strings.Builder
	fmt.Fprintln(&b, res.describe(res.Base, bn))
	fmt.Fprintln(&b, res.describe(res.New, nn))
	fmt.Fprintln(&b)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\t│ %s\t│ %s\t\t│\n", bn, nn)
	fmt.Fprintf(tw, "\t│ median ± CI\t│ median ± CI\tvs base\t│\n")
	for i := range res.Rows {
		r := &res.Rows[i]
		fmt.Fprintf(tw, "%s\t  %s\t  %s\t%s (%s)\t  %s\n", r.Metric.Name, r.baseString(), r.newString(), r.Delta(), r.Cmp.String(), r.verdict())
	}
	tw.Flush()
	// tabwriter pads the last cells; trim trailing blanks.
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	for i := range lines {
		lines[i] = strings.TrimRight(lines[i], " ")
	}
	out := strings.Join(lines, "\n") + "\n"
	if ws := res.warnings(); len(ws) > 0 {
		out += "\n"
		for _, s := range ws {
			out += "note: " + s + "\n"
		}
	}
	out += "\n" + res.Conclusion() + "\n"
	_, err := io.WriteString(w, out)
	return err
}

// BenchConfigKey is the file-configuration key that tells base from new in
// RenderBenchstat's output: `benchstat -col record FILE` compares them.
const BenchConfigKey = "record"

// RenderBenchstat writes every run of both records as Go benchmark lines
// (one benchmark per metric, one line per run) with better=lower unit
// metadata, for benchstat: `benchstat -col record FILE`.
func (res *Result) RenderBenchstat(w io.Writer) error {
	bn, nn := res.names()
	return WriteBenchmarks(w, []*Record{res.Base, res.New}, []string{bn, nn})
}

// WriteBenchmarks writes records as Go benchmark lines, each under the
// file configuration "record: <label>".
func WriteBenchmarks(w io.Writer, recs []*Record, labels []string) error {
	bw := benchfmt.NewWriter(w)
	metrics := MetricsOf(recs...)
	units := map[string]bool{}
	for _, m := range metrics {
		if m.LowerBetter && !units[m.Unit] {
			units[m.Unit] = true
			if err := bw.Write(&benchfmt.UnitMetadata{
				UnitMetadataKey: benchfmt.UnitMetadataKey{Unit: m.Unit, Key: "better"},
				OrigUnit:        m.Unit, Value: "lower",
			}); err != nil {
				return err
			}
		}
	}
	for i, rec := range recs {
		cfg := []benchfmt.Config{
			{Key: BenchConfigKey, Value: []byte(labels[i]), File: true},
			{Key: "method", Value: []byte(rec.Method), File: true},
		}
		if rec.GoVersion != "" {
			cfg = append(cfg, benchfmt.Config{Key: "go", Value: []byte(rec.GoVersion), File: true})
		}
		for _, m := range metrics {
			for _, v := range m.Values(rec) {
				r := &benchfmt.Result{
					Config: cfg,
					Name:   benchfmt.Name(m.Bench),
					Iters:  1,
					Values: []benchfmt.Value{{Value: v, Unit: m.Unit}},
				}
				if err := bw.Write(r); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// RenderMarkdown writes a table for a pull-request comment.
func (res *Result) RenderMarkdown(w io.Writer) error {
	bn, nn := res.names()
	var b strings.Builder
	if len(res.Regressions()) > 0 {
		fmt.Fprintf(&b, "### gmpwatch ci: :x: scheduler regression\n\n")
	} else {
		fmt.Fprintf(&b, "### gmpwatch ci: :white_check_mark: no scheduler regression\n\n")
	}
	fmt.Fprintf(&b, "| metric | %s (median ± CI) | %s (median ± CI) | vs base | p-value | n | verdict |\n", bn, nn)
	fmt.Fprintf(&b, "| --- | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for i := range res.Rows {
		r := &res.Rows[i]
		v := r.verdict()
		if r.Regression {
			v = "**" + v + "**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %.3f | %d+%d | %s |\n",
			r.Metric.Name, r.baseString(), r.newString(), r.Delta(), r.Cmp.P, r.Cmp.N1, r.Cmp.N2, v)
	}
	fmt.Fprintf(&b, "\n%s: `%s` · %s: `%s` · measured by %s\n", bn, strings.Join(res.Base.Command, " "), nn, strings.Join(res.New.Command, " "), res.Base.Method)
	for _, s := range res.warnings() {
		fmt.Fprintf(&b, "\n> note: %s\n", s)
	}
	fmt.Fprintf(&b, "\n%s\n", res.Conclusion())
	_, err := io.WriteString(w, b.String())
	return err
}

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name       string          `xml:"name,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Skipped    int             `xml:"skipped,attr"`
	Properties []junitProperty `xml:"properties>property"`
	Cases      []junitCase     `xml:"testcase"`
}

type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr,omitempty"`
	Text    string `xml:",chardata"`
}

// RenderJUnit writes a JUnit XML report: a test case per metric, failed
// when the metric regressed, skipped when it is informational.
func (res *Result) RenderJUnit(w io.Writer) error {
	bn, nn := res.names()
	s := junitSuite{Name: "gmpwatch.ci", Properties: []junitProperty{
		{Name: "base", Value: strings.Join(res.Base.Command, " ")},
		{Name: "new", Value: strings.Join(res.New.Command, " ")},
		{Name: "method", Value: res.Base.Method},
		{Name: "alpha", Value: fmt.Sprint(res.Alpha)},
	}}
	sort.SliceStable(s.Properties, func(i, j int) bool { return s.Properties[i].Name < s.Properties[j].Name })
	for i := range res.Rows {
		r := &res.Rows[i]
		detail := fmt.Sprintf("%s %s, %s %s, %s (%s)", bn, r.baseString(), nn, r.newString(), r.Delta(), r.Cmp.String())
		c := junitCase{Name: r.Metric.Name, Classname: "gmpwatch.ci." + strings.ReplaceAll(r.Metric.Bench, "/", ".")}
		switch {
		case !r.Checked:
			c.Skipped = &junitMessage{Message: "informational, no threshold"}
			c.SystemOut = detail
			s.Skipped++
		case r.Regression:
			c.Failure = &junitMessage{
				Message: fmt.Sprintf("%s regressed %+.2f%% (p=%.3f, threshold %s)", r.Metric.Name, r.DeltaPct, r.Cmp.P, pct(r.Threshold)),
				Type:    "regression",
				Text:    detail,
			}
			s.Failures++
		default:
			c.SystemOut = detail
		}
		s.Cases = append(s.Cases, c)
		s.Tests++
	}
	doc := junitSuites{Name: "gmpwatch ci", Tests: s.Tests, Failures: s.Failures, Suites: []junitSuite{s}}
	b, err := xml.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s%s\n", xml.Header, b)
	return err
}
