// Command bigbin is a large Go binary (tens of MB with DWARF) for measuring
// the time from gmpwatch's start to probes live: it links net/http, crypto,
// golang.org/x/tools (packages, SSA, the vet analyzers), x/text, cilium/ebpf, pprof and a TUI library,
// then prints "ready" and runs a small scheduler load until its standard
// input closes. It builds inside the gmpwatch module (for the dependencies):
// go build ./testdata/bigbin.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"html/template"
	"image"
	"image/png"
	"io"
	"net/http"
	_ "net/http/pprof"
	"os"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/pprof/driver"
	"github.com/google/pprof/profile"
	"golang.org/x/arch/arm/armasm"
	"golang.org/x/arch/arm64/arm64asm"
	"golang.org/x/arch/loong64/loong64asm"
	"golang.org/x/arch/ppc64/ppc64asm"
	"golang.org/x/arch/riscv64/riscv64asm"
	"golang.org/x/arch/s390x/s390xasm"
	"golang.org/x/arch/x86/x86asm"
	"golang.org/x/perf/benchmath"
	"golang.org/x/text/cases"
	"golang.org/x/text/collate"
	"golang.org/x/text/currency"
	"golang.org/x/text/encoding/htmlindex"
	"golang.org/x/text/encoding/japanese"
	"golang.org/x/text/encoding/korean"
	"golang.org/x/text/encoding/simplifiedchinese"
	"golang.org/x/text/encoding/traditionalchinese"
	"golang.org/x/text/language"
	"golang.org/x/text/language/display"
	"golang.org/x/text/unicode/norm"
	"golang.org/x/tools/go/analysis"
	"golang.org/x/tools/go/analysis/multichecker"
	"golang.org/x/tools/go/analysis/passes/appends"
	"golang.org/x/tools/go/analysis/passes/asmdecl"
	"golang.org/x/tools/go/analysis/passes/assign"
	"golang.org/x/tools/go/analysis/passes/atomic"
	"golang.org/x/tools/go/analysis/passes/atomicalign"
	"golang.org/x/tools/go/analysis/passes/bools"
	"golang.org/x/tools/go/analysis/passes/buildssa"
	"golang.org/x/tools/go/analysis/passes/buildtag"
	"golang.org/x/tools/go/analysis/passes/cgocall"
	"golang.org/x/tools/go/analysis/passes/composite"
	"golang.org/x/tools/go/analysis/passes/copylock"
	"golang.org/x/tools/go/analysis/passes/ctrlflow"
	"golang.org/x/tools/go/analysis/passes/deepequalerrors"
	"golang.org/x/tools/go/analysis/passes/defers"
	"golang.org/x/tools/go/analysis/passes/directive"
	"golang.org/x/tools/go/analysis/passes/errorsas"
	"golang.org/x/tools/go/analysis/passes/fieldalignment"
	"golang.org/x/tools/go/analysis/passes/findcall"
	"golang.org/x/tools/go/analysis/passes/framepointer"
	"golang.org/x/tools/go/analysis/passes/hostport"
	"golang.org/x/tools/go/analysis/passes/httpmux"
	"golang.org/x/tools/go/analysis/passes/httpresponse"
	"golang.org/x/tools/go/analysis/passes/ifaceassert"
	"golang.org/x/tools/go/analysis/passes/inline"
	"golang.org/x/tools/go/analysis/passes/loopclosure"
	"golang.org/x/tools/go/analysis/passes/lostcancel"
	"golang.org/x/tools/go/analysis/passes/modernize"
	"golang.org/x/tools/go/analysis/passes/nilfunc"
	"golang.org/x/tools/go/analysis/passes/nilness"
	"golang.org/x/tools/go/analysis/passes/printf"
	"golang.org/x/tools/go/analysis/passes/reflectvaluecompare"
	"golang.org/x/tools/go/analysis/passes/shadow"
	"golang.org/x/tools/go/analysis/passes/shift"
	"golang.org/x/tools/go/analysis/passes/sigchanyzer"
	"golang.org/x/tools/go/analysis/passes/slog"
	"golang.org/x/tools/go/analysis/passes/sortslice"
	"golang.org/x/tools/go/analysis/passes/sqlrowserr"
	"golang.org/x/tools/go/analysis/passes/stdmethods"
	"golang.org/x/tools/go/analysis/passes/stdversion"
	"golang.org/x/tools/go/analysis/passes/stringintconv"
	"golang.org/x/tools/go/analysis/passes/structtag"
	"golang.org/x/tools/go/analysis/passes/testinggoroutine"
	"golang.org/x/tools/go/analysis/passes/tests"
	"golang.org/x/tools/go/analysis/passes/timeformat"
	"golang.org/x/tools/go/analysis/passes/unmarshal"
	"golang.org/x/tools/go/analysis/passes/unreachable"
	"golang.org/x/tools/go/analysis/passes/unsafeptr"
	"golang.org/x/tools/go/analysis/passes/unusedresult"
	"golang.org/x/tools/go/analysis/passes/unusedwrite"
	"golang.org/x/tools/go/analysis/passes/waitgroup"
	"golang.org/x/tools/go/callgraph/cha"
	"golang.org/x/tools/go/callgraph/rta"
	"golang.org/x/tools/go/callgraph/vta"
	"golang.org/x/tools/go/packages"
	"golang.org/x/tools/go/ssa"
	"golang.org/x/tools/go/ssa/interp"
	"golang.org/x/tools/go/ssa/ssautil"
	"golang.org/x/tools/imports"
)

// heavy is never called with enough arguments; it keeps the libraries
// linked in.
func heavy() {
	pkgs, _ := packages.Load(&packages.Config{Mode: packages.LoadAllSyntax}, os.Args[1:]...)
	prog, _ := ssautil.AllPackages(pkgs, ssa.InstantiateGenerics)
	prog.Build()
	fset := token.NewFileSet()
	f, _ := parser.ParseFile(fset, "x.go", "package x", parser.AllErrors)
	ast.Print(fset, f)
	http.ListenAndServeTLS(":0", "c", "k", nil)
	_, _ = tls.Dial("tcp", "x:1", &tls.Config{})
	_, _ = x509.SystemCertPool()
	_, _ = sql.Open("x", "y")
	template.Must(template.New("x").Parse("{{.}}")).Execute(os.Stdout, 1)
	png.Encode(io.Discard, image.NewRGBA(image.Rect(0, 0, 1, 1)))
	p, _ := profile.Parse(os.Stdin)
	p.Write(os.Stdout)
	spec, _ := ebpf.LoadCollectionSpec("x.o")
	coll, _ := ebpf.NewCollection(spec)
	ex, _ := link.OpenExecutable("x")
	ex.Uprobe("x", coll.Programs["x"], nil)
	inst, _ := x86asm.Decode([]byte{0x90}, 64)
	fmt.Println(x86asm.GoSyntax(inst, 0, nil))
	s := benchmath.AssumeNothing.Summary(benchmath.NewSample([]float64{1, 2}, &benchmath.DefaultThresholds), 0.95)
	json.NewEncoder(os.Stdout).Encode(s)
	tea.NewProgram(nil).Run()
	fmt.Println(lipgloss.NewStyle().Bold(true).Render("x"))
	multichecker.Main(
		appends.Analyzer,
		asmdecl.Analyzer,
		assign.Analyzer,
		atomic.Analyzer,
		atomicalign.Analyzer,
		bools.Analyzer,
		buildssa.Analyzer,
		buildtag.Analyzer,
		cgocall.Analyzer,
		composite.Analyzer,
		copylock.Analyzer,
		ctrlflow.Analyzer,
		deepequalerrors.Analyzer,
		defers.Analyzer,
		directive.Analyzer,
		errorsas.Analyzer,
		fieldalignment.Analyzer,
		findcall.Analyzer,
		framepointer.Analyzer,
		hostport.Analyzer,
		httpmux.Analyzer,
		httpresponse.Analyzer,
		ifaceassert.Analyzer,
		inline.Analyzer,
		loopclosure.Analyzer,
		lostcancel.Analyzer,
		nilfunc.Analyzer,
		nilness.Analyzer,
		printf.Analyzer,
		reflectvaluecompare.Analyzer,
		shadow.Analyzer,
		shift.Analyzer,
		sigchanyzer.Analyzer,
		slog.Analyzer,
		sortslice.Analyzer,
		sqlrowserr.Analyzer,
		stdmethods.Analyzer,
		stdversion.Analyzer,
		stringintconv.Analyzer,
		structtag.Analyzer,
		testinggoroutine.Analyzer,
		tests.Analyzer,
		timeformat.Analyzer,
		unmarshal.Analyzer,
		unreachable.Analyzer,
		unsafeptr.Analyzer,
		unusedresult.Analyzer,
		unusedwrite.Analyzer,
		waitgroup.Analyzer,
	)
	multichecker.Main(modernize.Suite...)
	driver.PProf(&driver.Options{})
	var _ []*analysis.Analyzer
	armasm.Decode(nil, armasm.ModeARM)
	arm64asm.Decode(nil)
	loong64asm.Decode(nil)
	riscv64asm.Decode(nil)
	s390xasm.Decode(nil)
	ppc64asm.Decode(nil, nil)
	interp.Interpret(nil, 0, nil, "", nil)
	imports.Process("x.go", nil, nil)
	fmt.Println(japanese.ShiftJIS, korean.EUCKR, simplifiedchinese.GB18030, traditionalchinese.Big5)
	fmt.Println(display.English.Languages().Name(language.French), currency.EUR)
	fmt.Println(cha.CallGraph(prog), rta.Analyze(nil, true), vta.CallGraph(nil, nil))
	collate.New(language.Und).CompareString("a", "b")
	e, _ := htmlindex.Get("shift_jis")
	fmt.Println(e, norm.NFC.String("x"), cases.Title(language.German).String("x"))
}

func main() {
	if len(os.Args) > 100 {
		heavy()
	}
	fmt.Println("ready")
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	ch := make(chan int)
	go func() {
		for v := range ch {
			_ = v
		}
	}()
	for {
		select {
		case <-done:
			return
		case ch <- 1:
			time.Sleep(time.Millisecond)
		}
	}
}
