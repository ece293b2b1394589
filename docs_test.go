package main

// The documentation checks: the links between the repository's documents resolve, and the
// reference, the example configuration and the runbooks name everything the code declares.
// They read the code's own lists (config.Variables, the collectors metrics.New registers, the
// alert rules), so a variable, metric or alert added without its documentation fails here.

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/config"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

const (
	referenceDoc  = "docs/reference.md"
	operationsDoc = "docs/operations.md"
	exampleEnv    = "config.example.env"
	alertRules    = "deploy/prometheus/alerts.yaml"
)

// linkedDocs are the documents whose relative links must resolve.
func linkedDocs(t *testing.T) []string {
	t.Helper()
	pages, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"reference.md", "kubernetes.md", "connecting-customers.md", "operations.md", "design.md", "development.md"} {
		if !slices.Contains(pages, filepath.Join("docs", want)) {
			t.Errorf("docs/%s is missing", want)
		}
	}
	return append([]string{"README.md", "SECURITY.md", "CHANGELOG.md", "charts/pleo-auth-proxy/README.md"}, pages...)
}

// markdown is a Markdown document split into what the checks need.
type markdown struct {
	// anchors are the fragment ids its headings (and explicit HTML anchors) get on GitHub.
	anchors map[string]bool
	// links are the link destinations outside code, with the line they are on.
	links []mdLink
	// sections maps each heading's text to the lines under it, up to the next heading.
	sections map[string][]string
}

type mdLink struct {
	line   int
	target string
}

var (
	atxHeading = regexp.MustCompile(`^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$`)
	fenceLine  = regexp.MustCompile("^ {0,3}(```+|~~~+)")
	codeSpan   = regexp.MustCompile("`+[^`]*`+")
	// inlineLink matches [text](destination "title") and ![alt](destination); the
	// destination is group 1 (angle brackets allowed).
	inlineLink = regexp.MustCompile(`!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)`)
	// refDefinition matches a link reference definition: [label]: destination.
	refDefinition = regexp.MustCompile(`^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?`)
	htmlAnchor    = regexp.MustCompile(`<a\s+(?:name|id)="([^"]+)"`)
	// slugDrop is what GitHub removes from a heading's text to make its anchor: everything
	// but letters, marks, digits, connector punctuation (the underscore), spaces and hyphens.
	slugDrop = regexp.MustCompile(`[^\p{L}\p{M}\p{Nd}\p{Pc} -]`)
)

// githubSlug is the anchor GitHub gives a heading: the rendered text (links reduced to their
// text, code spans to their content) lower-cased, punctuation removed, spaces made hyphens.
func githubSlug(heading string) string {
	s := inlineLink.ReplaceAllStringFunc(heading, func(m string) string {
		return m[strings.Index(m, "[")+1 : strings.LastIndex(m, "](")]
	})
	s = strings.Map(func(r rune) rune {
		if unicode.IsUpper(r) {
			return unicode.ToLower(r)
		}
		return r
	}, s)
	s = slugDrop.ReplaceAllString(s, "")
	return strings.ReplaceAll(s, " ", "-")
}

func readMarkdown(t *testing.T, path string) markdown {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	md := markdown{anchors: map[string]bool{}, sections: map[string][]string{}}
	seen := map[string]int{}
	fence, section := "", ""
	for i, line := range strings.Split(string(b), "\n") {
		if m := fenceLine.FindStringSubmatch(line); m != nil {
			switch {
			case fence == "":
				fence = m[1]
			case strings.HasPrefix(m[1], fence[:1]) && len(m[1]) >= len(fence) && strings.TrimSpace(line) == m[1]:
				fence = ""
			}
			if section != "" {
				md.sections[section] = append(md.sections[section], line)
			}
			continue
		}
		if fence != "" {
			if section != "" {
				md.sections[section] = append(md.sections[section], line)
			}
			continue
		}
		if m := atxHeading.FindStringSubmatch(line); m != nil {
			section = m[2]
			slug := githubSlug(section)
			// GitHub numbers repeated anchors: x, x-1, x-2.
			if n := seen[slug]; n > 0 {
				md.anchors[fmt.Sprintf("%s-%d", slug, n)] = true
			} else {
				md.anchors[slug] = true
			}
			seen[slug]++
			md.sections[section] = nil
			continue
		}
		if section != "" {
			md.sections[section] = append(md.sections[section], line)
		}
		for _, m := range htmlAnchor.FindAllStringSubmatch(line, -1) {
			md.anchors[m[1]] = true
		}
		text := codeSpan.ReplaceAllString(line, "")
		for _, m := range inlineLink.FindAllStringSubmatch(text, -1) {
			md.links = append(md.links, mdLink{i + 1, m[1]})
		}
		if m := refDefinition.FindStringSubmatch(text); m != nil {
			md.links = append(md.links, mdLink{i + 1, m[1]})
		}
	}
	return md
}

// TestDocsLinksResolve: every relative link in the documentation names a file of this
// repository, and every #fragment a heading of its target (GitHub's anchor rules). Links
// that leave the repository (../shared/…, /etc/…) are refused: a reader of the repository
// cannot follow them.
func TestDocsLinksResolve(t *testing.T) {
	root, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	parsed := map[string]markdown{}
	read := func(path string) markdown {
		md, ok := parsed[path]
		if !ok {
			md = readMarkdown(t, path)
			parsed[path] = md
		}
		return md
	}
	checked := 0
	for _, doc := range linkedDocs(t) {
		for _, l := range read(doc).links {
			where := fmt.Sprintf("%s:%d: link %q", doc, l.line, l.target)
			if l.target == "" {
				t.Errorf("%s: empty destination", where)
				continue
			}
			if regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`).MatchString(l.target) {
				continue // https:, mailto:: not a file of the repository
			}
			checked++
			path, fragment, _ := strings.Cut(l.target, "#")
			if strings.HasPrefix(path, "/") {
				t.Errorf("%s: an absolute path; link relative to %s", where, filepath.Dir(doc))
				continue
			}
			target := doc
			if path != "" {
				target = filepath.Join(filepath.Dir(doc), filepath.FromSlash(path))
			}
			abs, err := filepath.Abs(target)
			if err != nil {
				t.Fatal(err)
			}
			if rel, err := filepath.Rel(root, abs); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				t.Errorf("%s: leaves the repository (%s)", where, abs)
				continue
			}
			info, err := os.Stat(target)
			if err != nil {
				t.Errorf("%s: %s does not exist", where, target)
				continue
			}
			if fragment == "" {
				continue
			}
			if info.IsDir() || !strings.HasSuffix(target, ".md") {
				t.Errorf("%s: a #fragment on %s, which is not a Markdown file", where, target)
				continue
			}
			if !read(target).anchors[fragment] {
				t.Errorf("%s: %s has no heading with anchor #%s", where, target, fragment)
			}
		}
	}
	if checked == 0 {
		t.Fatal("found no relative link at all: the link parser is broken")
	}
}

// tableNames returns the names in backquotes in the first cell of every table row in the
// section headed heading, e.g. `PLEO_PROXY_ADMIN_TOKEN`, `PLEO_PROXY_ADMIN_TOKEN_FILE`.
func tableNames(t *testing.T, md markdown, doc, heading string) map[string]bool {
	t.Helper()
	lines, ok := md.sections[heading]
	if !ok {
		t.Fatalf("%s has no section %q", doc, heading)
	}
	names := map[string]bool{}
	quoted := regexp.MustCompile("`([^`]+)`")
	for _, line := range lines {
		cells := strings.Split(strings.TrimSpace(line), "|")
		if len(cells) < 3 || cells[0] != "" {
			continue
		}
		for _, m := range quoted.FindAllStringSubmatch(cells[1], -1) {
			names[m[1]] = true
		}
	}
	return names
}

// TestDocsConfigVariables: every variable the configuration reads (config.Variables: the env
// tags of the struct caarlos0/env fills, nested structs and _FILE variants included) has a
// row in the reference's configuration table and a line in config.example.env; and the
// table names no variable the configuration does not read.
func TestDocsConfigVariables(t *testing.T) {
	vars := config.Variables()
	if !slices.Contains(vars, "PLEO_PROXY_LISTEN_ADDR") || !slices.Contains(vars, "PLEO_PROXY_ADMIN_TOKEN_FILE") {
		t.Fatalf("config.Variables() = %v: the list is not what this test expects", vars)
	}
	documented := tableNames(t, readMarkdown(t, referenceDoc), referenceDoc, "Configuration")
	example, err := os.ReadFile(exampleEnv)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vars {
		if !documented[v] {
			t.Errorf("%s is read by the configuration but has no row in the table of %s, section Configuration", v, referenceDoc)
		}
		if !regexp.MustCompile(`(?m)^#?` + regexp.QuoteMeta(v) + `=`).Match(example) {
			t.Errorf("%s is read by the configuration but %s has no line %s=… (or #%s=…)", v, exampleEnv, v, v)
		}
	}
	for name := range documented {
		if strings.HasPrefix(name, config.Prefix) && !slices.Contains(vars, name) {
			t.Errorf("%s, section Configuration, documents %s, which the configuration does not read", referenceDoc, name)
		}
	}
}

// recordingRegisterer remembers every collector registered with it.
type recordingRegisterer struct {
	prometheus.Registerer
	collectors []prometheus.Collector
}

func (r *recordingRegisterer) Register(c prometheus.Collector) error {
	r.collectors = append(r.collectors, c)
	return r.Registerer.Register(c)
}

func (r *recordingRegisterer) MustRegister(cs ...prometheus.Collector) {
	r.collectors = append(r.collectors, cs...)
	r.Registerer.MustRegister(cs...)
}

// metricConstructors are the functions of package metrics that register collectors, each
// called with a recording registerer. registeredMetrics refuses to run when package metrics
// has another exported function taking a prometheus.Registerer: add it here.
var metricConstructors = map[string]func(prometheus.Registerer){
	"New":       func(r prometheus.Registerer) { metrics.New(r) },
	"NewEvents": func(r prometheus.Registerer) { metrics.NewEvents(r) },
}

// registererFuncs lists the exported functions of package metrics (its non-test files) that
// take a prometheus.Registerer.
func registererFuncs(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("metrics/*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var names []string
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || !fn.Name.IsExported() {
				continue
			}
			for _, p := range fn.Type.Params.List {
				if sel, ok := p.Type.(*ast.SelectorExpr); ok && sel.Sel.Name == "Registerer" {
					names = append(names, fn.Name.Name)
				}
			}
		}
	}
	if len(names) == 0 {
		t.Fatal("found no function of package metrics taking a prometheus.Registerer")
	}
	return names
}

// registeredMetrics returns the name of every metric the constructors of package metrics
// register. It reads the collectors' descriptors rather than gathering samples, because a
// vector without a labelled child yet exposes nothing.
func registeredMetrics(t *testing.T) []string {
	t.Helper()
	for _, name := range registererFuncs(t) {
		if metricConstructors[name] == nil {
			t.Fatalf("metrics.%s takes a prometheus.Registerer but is not in metricConstructors of %s: add it, so its metrics are checked", name, "docs_test.go")
		}
	}
	rec := &recordingRegisterer{Registerer: prometheus.NewRegistry()}
	for _, register := range metricConstructors {
		register(rec)
	}
	descs := make(chan *prometheus.Desc)
	go func() {
		for _, c := range rec.collectors {
			c.Describe(descs)
		}
		close(descs)
	}()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	var names []string
	for d := range descs {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read the name of descriptor %s", d)
		}
		names = append(names, m[1])
	}
	if len(names) == 0 {
		t.Fatal("the metrics constructors registered nothing")
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// TestDocsMetrics: every metric package metrics registers has a row in the reference's metrics
// table, and the table names no metric the code does not register.
func TestDocsMetrics(t *testing.T) {
	names := registeredMetrics(t)
	documented := tableNames(t, readMarkdown(t, referenceDoc), referenceDoc, "Metrics")
	for _, n := range names {
		if !documented[n] {
			t.Errorf("metric %s is registered by package metrics but has no row in the table of %s, section Metrics", n, referenceDoc)
		}
	}
	for name := range documented {
		if !slices.Contains(names, name) {
			t.Errorf("%s, section Metrics, documents %s, which package metrics does not register", referenceDoc, name)
		}
	}
}

// TestDocsAlertRunbooks: every alert has a section headed with its name in the runbooks of
// docs/operations.md, and its runbook_url names that section, relative to the repository.
func TestDocsAlertRunbooks(t *testing.T) {
	b, err := os.ReadFile(alertRules)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("%s: %v", alertRules, err)
	}
	ops := readMarkdown(t, operationsDoc)
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			body, ok := ops.sections[r.Alert]
			if !ok {
				t.Errorf("alert %s has no runbook: %s needs a section headed %q", r.Alert, operationsDoc, r.Alert)
			} else if strings.TrimSpace(strings.Join(body, "\n")) == "" {
				t.Errorf("alert %s: its runbook section in %s is empty", r.Alert, operationsDoc)
			}
			want := operationsDoc + "#" + githubSlug(r.Alert)
			if got := r.Annotations["runbook_url"]; got != want {
				t.Errorf("alert %s: runbook_url %q, want %q (its section in %s, relative to the repository)", r.Alert, got, want, operationsDoc)
			}
		}
	}
	if alerts == 0 {
		t.Fatalf("%s defines no alert", alertRules)
	}
}
