// Tests of the Helm chart (charts/pleo-auth-proxy), the Dockerfile and the monitoring files
// in deploy/: helm lint --strict and helm template over every values file in the chart's ci/
// folder, with the rendered manifests parsed and checked for the properties the chart
// promises (hardened containers, probes on the admin port, secrets only as mounted files,
// client tokens in standalone mode, optional resources only when enabled).
//
// Helm runs as $HELM (for instance HELM=/tmp/helmbin/helm); when HELM is unset the tests
// build helm.sh/helm/v3/cmd/helm@v3.22.0 once with the Go toolchain (a few minutes the first
// time, then cached). The tests fail, never skip, when helm cannot run.
package charts_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

const (
	chartDir     = "pleo-auth-proxy"
	chartName    = "pleo-auth-proxy"
	helmModule   = "helm.sh/helm/v3/cmd/helm@v3.22.0"
	secretsDir   = "/etc/pleo-auth-proxy/secrets"
	dataDir      = "/var/lib/pleo-auth-proxy"
	adminPort    = 7381
	dataPort     = 7380
	nonrootUID   = 65532
	releaseName  = "ci-rel"
	releaseNS    = "ci-ns"
	alertsFile   = "../deploy/prometheus/alerts.yaml"
	alertsTest   = "../deploy/prometheus/alerts_test.yaml"
	dashboardSrc = "../deploy/grafana/dashboard.json"
)

// helm is the command that runs Helm, or helmErr says why there is none.
var (
	helm    []string
	helmErr error
	helmEnv []string
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	home, err := os.MkdirTemp("", "pleo-chart-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(home)
	// Keep helm away from the user's configuration, cache and repositories.
	helmEnv = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	if h := strings.TrimSpace(os.Getenv("HELM")); h != "" {
		helm = strings.Fields(h)
	} else {
		helm, helmErr = buildHelm(filepath.Join(home, "bin"))
	}
	return m.Run()
}

// buildHelm installs the pinned helm into dir (what `go run helm.sh/helm/v3/cmd/helm@v3.22.0`
// would build, once instead of once per call).
func buildHelm(dir string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", helmModule)
	cmd.Dir = os.TempDir() // outside this module: the version comes from the @ suffix only
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go install %s (set HELM to a helm binary instead): %w\n%s", helmModule, err, out)
	}
	return []string{filepath.Join(dir, "helm")}, nil
}

// runHelm runs helm with args and returns its standard output and error.
func runHelm(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	if helmErr != nil {
		t.Fatalf("helm cannot run: %v", helmErr)
	}
	if len(helm) == 0 {
		t.Fatal("helm cannot run: no command")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, helm[0], append(slices.Clone(helm[1:]), args...)...)
	cmd.Env = helmEnv
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		// helm did not run at all (not found, not executable): that is a test failure.
		t.Fatalf("helm cannot run (%q): %v", helm, err)
	}
	return out.String(), errOut.String(), err
}

// mustHelm runs helm and fails the test if it fails.
func mustHelm(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := runHelm(t, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, errOut, out)
	}
	return out
}

// ---------------------------------------------------------------------------------------
// Rendered manifests

type obj = map[string]any

// doc is one rendered manifest.
type doc struct {
	Kind, Name string
	Body       obj
}

func parseDocs(t *testing.T, rendered string) []doc {
	t.Helper()
	dec := yaml.NewDecoder(strings.NewReader(rendered))
	var docs []doc
	for {
		var m obj
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("rendered output is not valid YAML: %v\n%s", err, rendered)
		}
		if m == nil {
			continue
		}
		docs = append(docs, doc{Kind: str(m["kind"]), Name: str(dig(m, "metadata", "name")), Body: m})
	}
	return docs
}

func ofKind(docs []doc, kind string) []doc {
	var out []doc
	for _, d := range docs {
		if d.Kind == kind {
			out = append(out, d)
		}
	}
	return out
}

// dig follows keys through nested maps; nil when a key is missing.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(obj)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func list(v any) []any {
	l, _ := v.([]any)
	return l
}

func asInt(v any) (int, bool) {
	switch n := v.(type) {
	case int:
		return n, true
	case int64:
		return int(n), true
	case float64:
		return int(n), n == float64(int(n))
	}
	return 0, false
}

// namedItem finds the map with name in a list of maps.
func namedItem(l []any, name string) obj {
	for _, it := range l {
		if m, ok := it.(obj); ok && str(m["name"]) == name {
			return m
		}
	}
	return nil
}

// ---------------------------------------------------------------------------------------
// Values files

func readValues(t *testing.T, file string) obj {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var v obj
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if v == nil {
		v = obj{}
	}
	return v
}

func flag(v obj, keys ...string) bool {
	b, _ := dig(v, keys...).(bool)
	return b
}

// secretValues lists what must never appear in rendered output: the secrets the values set
// (secrets.*, store.postgres.dsn), every string containing FAKE (the ci files' convention for
// fake secrets), and each FAKE-... word inside them (the password inside a DSN).
func secretValues(v obj) []string {
	var out []string
	add := func(s string) {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, k := range []string{"oauthClientSecret", "encryptionKey", "adminToken", "connectKey"} {
		add(str(dig(v, "secrets", k)))
	}
	for _, tok := range list(dig(v, "secrets", "clientTokens")) {
		add(str(tok))
	}
	add(str(dig(v, "store", "postgres", "dsn")))
	fake := regexp.MustCompile(`FAKE[A-Za-z0-9_-]*`)
	var walk func(any)
	walk = func(x any) {
		switch x := x.(type) {
		case obj:
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		case string:
			if strings.Contains(x, "FAKE") {
				add(x)
				for _, w := range fake.FindAllString(x, -1) {
					add(w)
				}
			}
		}
	}
	walk(v)
	return out
}

// assertNoSecretInline fails if any secret value appears anywhere in rendered, and if a
// Secret uses stringData (which would put values in clear text).
func assertNoSecretInline(t *testing.T, rendered string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(rendered, s) {
			t.Errorf("the secret value %q appears inline in the rendered output", s)
		}
	}
	if regexp.MustCompile(`(?m)^\s*stringData:`).MatchString(rendered) {
		t.Error("the rendered output uses stringData: secrets must be base64 data, mounted as files")
	}
}

// ---------------------------------------------------------------------------------------
// The chart over each ci values file

// ciValuesFiles are the test values files; the named ones must exist.
func ciValuesFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sidecar-values.yaml", "standalone-values.yaml", "monitoring-values.yaml", "postgres-values.yaml"} {
		if !slices.Contains(files, filepath.Join(chartDir, "ci", want)) {
			t.Errorf("%s/ci/%s is missing", chartDir, want)
		}
	}
	return files
}

func TestChartWithCIValues(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".yaml"), func(t *testing.T) {
			t.Parallel()
			values := readValues(t, file)
			secrets := secretValues(values)
			standalone := flag(values, "standalone", "enabled")

			mustHelm(t, "lint", "--strict", chartDir, "-f", file)
			rendered := mustHelm(t, "template", releaseName, chartDir, "--namespace", releaseNS, "-f", file)
			assertNoSecretInline(t, rendered, secrets)
			docs := parseDocs(t, rendered)

			checkOptionalResources(t, docs, values)
			checkChartSecret(t, docs, values)

			if standalone {
				checkStandalone(t, docs, values)
				return
			}
			if n := len(ofKind(docs, "Deployment")); n != 0 {
				t.Errorf("sidecar mode rendered %d Deployment(s), want none (the container goes into your own)", n)
			}
			if n := len(ofKind(docs, "Service")); n != 0 {
				t.Errorf("sidecar mode rendered %d Service(s), want none", n)
			}
			// The sidecar as a user would add it: a parent chart including the named templates.
			parent := renderParent(t, values)
			assertNoSecretInline(t, parent, secrets)
			checkSidecarInParent(t, parseDocs(t, parent), values)
		})
	}
}

// checkStandalone checks the Deployment, Service and ServiceAccount of standalone mode.
func checkStandalone(t *testing.T, docs []doc, values obj) {
	t.Helper()
	deps := ofKind(docs, "Deployment")
	if len(deps) != 1 {
		t.Fatalf("standalone mode rendered %d Deployments, want 1", len(deps))
	}
	dep := deps[0]
	spec := dig(dep.Body, "spec", "template", "spec").(obj)
	if want, ok := asInt(dig(values, "standalone", "replicaCount")); ok {
		if got, _ := asInt(dig(dep.Body, "spec", "replicas")); got != want {
			t.Errorf("Deployment replicas = %d, want %d", got, want)
		}
	}
	checkPodSpec(t, spec, values, true)
	for _, c := range list(spec["containers"]) {
		checkHardened(t, c.(obj))
	}
	if dig(spec, "securityContext", "runAsNonRoot") != true {
		t.Error("standalone pod: securityContext.runAsNonRoot is not true")
	}
	if sa := ofKind(docs, "ServiceAccount"); len(sa) != 1 || sa[0].Name != str(spec["serviceAccountName"]) {
		t.Errorf("standalone pod uses ServiceAccount %q; rendered ServiceAccounts: %v", spec["serviceAccountName"], names(sa))
	}

	// Client tokens are wired: the _FILE variable names a file of the secret volume.
	c := pleoContainer(t, spec, false)
	if got := envValue(c, "PLEO_PROXY_CLIENT_TOKENS_FILE"); got != secretsDir+"/client-tokens" {
		t.Errorf("standalone: PLEO_PROXY_CLIENT_TOKENS_FILE = %q, want %s/client-tokens", got, secretsDir)
	}
	// Settings given in config reach their variables; unset ones keep the sidecar's default.
	for key, name := range map[string]string{"upstreamMaxConns": "PLEO_PROXY_UPSTREAM_MAX_CONNS", "maxClientConns": "PLEO_PROXY_MAX_CLIENT_CONNS", "memoryLimit": "PLEO_PROXY_MEMORY_LIMIT"} {
		want := ""
		if v := dig(values, "config", key); v != nil {
			want = fmt.Sprint(v)
		}
		if got := envValue(c, name); got != want {
			t.Errorf("standalone: %s = %q, want %q (config.%s)", name, got, want, key)
		}
	}
	if envValue(c, "PLEO_PROXY_LISTEN_ADDR") != fmt.Sprintf("0.0.0.0:%d", dataPort) {
		t.Errorf("standalone: PLEO_PROXY_LISTEN_ADDR = %q, want 0.0.0.0:%d", envValue(c, "PLEO_PROXY_LISTEN_ADDR"), dataPort)
	}

	svcs := ofKind(docs, "Service")
	if len(svcs) != 1 {
		t.Fatalf("standalone mode rendered %d Services, want 1", len(svcs))
	}
	ports := list(dig(svcs[0].Body, "spec", "ports"))
	for name, target := range map[string]string{"http": "pleo-proxy", "admin": "pleo-admin"} {
		p := namedItem(ports, name)
		if p == nil || str(p["targetPort"]) != target {
			t.Errorf("Service port %q: %v, want targetPort %s", name, p, target)
		}
	}
	if got, _ := asInt(dig(namedItem(ports, "http"), "port")); got != dataPort {
		t.Errorf("Service port http = %d, want %d", got, dataPort)
	}
	if !reflect.DeepEqual(dig(svcs[0].Body, "spec", "selector"), dig(dep.Body, "spec", "selector", "matchLabels")) {
		t.Error("the Service's selector differs from the Deployment's")
	}
}

// checkSidecarInParent checks the parent chart's Deployment with the sidecar included.
func checkSidecarInParent(t *testing.T, docs []doc, values obj) {
	t.Helper()
	var app *doc
	for _, d := range ofKind(docs, "Deployment") {
		if d.Name == releaseName+"-app" {
			app = &d
		}
	}
	if app == nil {
		t.Fatalf("the parent chart rendered no Deployment %s-app", releaseName)
	}
	spec := dig(app.Body, "spec", "template", "spec").(obj)
	checkPodSpec(t, spec, values, false)
	appC := namedItem(list(spec["containers"]), "app")
	if got := envValue(appC, "PLEO_API_URL"); got != fmt.Sprintf("http://127.0.0.1:%d", dataPort) {
		t.Errorf(`include "pleo-auth-proxy.url" = %q, want http://127.0.0.1:%d`, got, dataPort)
	}
}

func names(docs []doc) []string {
	var out []string
	for _, d := range docs {
		out = append(out, d.Name)
	}
	return out
}

// pleoContainer finds the sidecar container in a pod spec (in initContainers when native).
func pleoContainer(t *testing.T, spec obj, native bool) obj {
	t.Helper()
	where := "containers"
	if native {
		where = "initContainers"
	}
	c := namedItem(list(spec[where]), chartName)
	if c == nil {
		t.Fatalf("no container %q in the pod's %s", chartName, where)
	}
	return c
}

func envValue(c obj, name string) string {
	return str(namedItem(list(c["env"]), name)["value"])
}

// checkHardened checks a container's securityContext.
func checkHardened(t *testing.T, c obj) {
	t.Helper()
	name := str(c["name"])
	sc, _ := c["securityContext"].(obj)
	if sc == nil {
		t.Errorf("container %s: no securityContext", name)
		return
	}
	for key, want := range map[string]any{
		"runAsNonRoot":             true,
		"readOnlyRootFilesystem":   true,
		"allowPrivilegeEscalation": false,
	} {
		if sc[key] != want {
			t.Errorf("container %s: securityContext.%s = %v, want %v", name, key, sc[key], want)
		}
	}
	if uid, _ := asInt(sc["runAsUser"]); uid != nonrootUID {
		t.Errorf("container %s: securityContext.runAsUser = %v, want %d", name, sc["runAsUser"], nonrootUID)
	}
	if drop := list(dig(sc, "capabilities", "drop")); !slices.Contains(drop, any("ALL")) {
		t.Errorf("container %s: securityContext.capabilities.drop = %v, want ALL", name, drop)
	}
	if add := list(dig(sc, "capabilities", "add")); len(add) > 0 {
		t.Errorf("container %s: securityContext.capabilities.add = %v, want none", name, add)
	}
	if got := str(dig(sc, "seccompProfile", "type")); got != "RuntimeDefault" {
		t.Errorf("container %s: securityContext.seccompProfile.type = %q, want RuntimeDefault", name, got)
	}
}

// checkPodSpec checks the sidecar container within its pod.
// nativeAtDefaultVersion reports whether values make a native sidecar when rendered without
// --kube-version: Helm then assumes Kubernetes 1.20, where sidecar.native auto is classic.
func nativeAtDefaultVersion(values obj, standalone bool) bool {
	return flag(values, "sidecar", "native") && !standalone
}

func checkPodSpec(t *testing.T, spec obj, values obj, standalone bool) {
	t.Helper()
	checkPodSpecForm(t, spec, values, standalone, nativeAtDefaultVersion(values, standalone))
}

// checkPodSpecForm checks a pod spec whose sidecar is native (in initContainers, with
// restartPolicy Always, and only there) or classic (in containers, without one, and only
// there), and the shutdown delay that suits the form.
func checkPodSpecForm(t *testing.T, spec obj, values obj, standalone, native bool) {
	t.Helper()
	c := pleoContainer(t, spec, native)
	checkHardened(t, c)
	if native && str(c["restartPolicy"]) != "Always" {
		t.Errorf("native sidecar: restartPolicy = %q, want Always", c["restartPolicy"])
	}
	if !native && c["restartPolicy"] != nil {
		t.Errorf("classic sidecar: restartPolicy = %v, want none (Kubernetes rejects it outside initContainers)", c["restartPolicy"])
	}
	other := "initContainers"
	if native {
		other = "containers"
	}
	if namedItem(list(spec[other]), chartName) != nil {
		t.Errorf("the sidecar is in both containers and initContainers")
	}
	wantDelay := "5s"
	if native {
		wantDelay = "0s"
	}
	if d := str(dig(values, "config", "shutdownDelay")); d != "" {
		wantDelay = d
	}
	if got := envValue(c, "PLEO_PROXY_SHUTDOWN_DELAY"); got != wantDelay {
		t.Errorf("PLEO_PROXY_SHUTDOWN_DELAY = %q, want %q (native %v)", got, wantDelay, native)
	}

	// Ports: admin always, data only where it listens beyond loopback.
	ports := list(c["ports"])
	portNumber := func(name string) int {
		n, _ := asInt(namedItem(ports, name)["containerPort"])
		return n
	}
	if portNumber("pleo-admin") != adminPort {
		t.Errorf("container port pleo-admin = %d, want %d (ports %v)", portNumber("pleo-admin"), adminPort, ports)
	}
	if standalone && portNumber("pleo-proxy") != dataPort {
		t.Errorf("standalone: container port pleo-proxy = %d, want %d", portNumber("pleo-proxy"), dataPort)
	}
	if !standalone {
		for _, p := range ports {
			if n, _ := asInt(p.(obj)["containerPort"]); n == dataPort {
				t.Errorf("sidecar mode declares container port %d, but the data listener is on loopback", dataPort)
			}
		}
		if got := envValue(c, "PLEO_PROXY_LISTEN_ADDR"); got != fmt.Sprintf("127.0.0.1:%d", dataPort) {
			t.Errorf("sidecar: PLEO_PROXY_LISTEN_ADDR = %q, want 127.0.0.1:%d", got, dataPort)
		}
	}
	if got := envValue(c, "PLEO_PROXY_ADMIN_ADDR"); got != fmt.Sprintf(":%d", adminPort) {
		t.Errorf("PLEO_PROXY_ADMIN_ADDR = %q, want :%d", got, adminPort)
	}

	// Probes: liveness /healthz and readiness /readyz, both on the admin port.
	probes := map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
	if v, ok := dig(values, "readinessProbe", "enabled").(bool); ok && !v {
		delete(probes, "readinessProbe")
		if c["readinessProbe"] != nil {
			t.Error("readinessProbe.enabled is false but the container has a readiness probe")
		}
	}
	for probe, wantPath := range probes {
		hg := dig(c, probe, "httpGet")
		if hg == nil {
			t.Errorf("container has no %s.httpGet", probe)
			continue
		}
		if got := str(dig(hg, "path")); got != wantPath {
			t.Errorf("%s path = %q, want %s", probe, got, wantPath)
		}
		port := dig(hg, "port")
		if name, ok := port.(string); ok {
			port = namedItem(ports, name)["containerPort"]
		}
		if n, _ := asInt(port); n != adminPort {
			t.Errorf("%s port = %v, want the admin port %d", probe, dig(hg, "port"), adminPort)
		}
	}

	// Environment: secrets only through _FILE variables naming files of a mounted Secret.
	volumes := list(spec["volumes"])
	mounts := list(c["volumeMounts"])
	var secretVolume obj
	for _, m := range mounts {
		m := m.(obj)
		if str(m["mountPath"]) == secretsDir {
			if m["readOnly"] != true {
				t.Errorf("the secrets mount %s is not readOnly", secretsDir)
			}
			secretVolume = namedItem(volumes, str(m["name"]))
		}
	}
	for _, e := range list(c["env"]) {
		e := e.(obj)
		name, value := str(e["name"]), e["value"]
		switch name {
		case "PLEO_PROXY_OAUTH_CLIENT_SECRET", "PLEO_PROXY_ENCRYPTION_KEY", "PLEO_PROXY_ADMIN_TOKEN", "PLEO_PROXY_CLIENT_TOKENS", "PLEO_PROXY_CONNECT_KEY":
			t.Errorf("%s is set in the environment; secrets must come through %s_FILE", name, name)
		case "PLEO_PROXY_STORE":
			if value != nil && !strings.HasPrefix(str(value), "file://") {
				t.Errorf("PLEO_PROXY_STORE = %q inline; a database DSN must come from a Secret", value)
			}
		}
		if !strings.HasSuffix(name, "_FILE") {
			continue
		}
		file := str(value)
		if path.Dir(file) != secretsDir {
			t.Errorf("%s = %q, want a file under %s", name, file, secretsDir)
			continue
		}
		if secretVolume == nil || dig(secretVolume, "secret") == nil {
			t.Errorf("%s = %q but no Secret volume is mounted at %s", name, file, secretsDir)
			continue
		}
		found := false
		for _, it := range list(dig(secretVolume, "secret", "items")) {
			found = found || str(it.(obj)["path"]) == path.Base(file)
		}
		if !found {
			t.Errorf("%s = %q but the secret volume has no item with path %s", name, file, path.Base(file))
		}
	}
	// Every secret the values configure reaches the container.
	for key, env := range map[string]string{
		"oauthClientSecret": "PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE",
		"encryptionKey":     "PLEO_PROXY_ENCRYPTION_KEY_FILE",
		"adminToken":        "PLEO_PROXY_ADMIN_TOKEN_FILE",
		"clientTokens":      "PLEO_PROXY_CLIENT_TOKENS_FILE",
		"connectKey":        "PLEO_PROXY_CONNECT_KEY_FILE",
	} {
		set := str(dig(values, "secrets", key)) != "" || len(list(dig(values, "secrets", key))) > 0 ||
			str(dig(values, "secrets", "existingSecretKeys", key)) != ""
		if set && envValue(c, env) == "" {
			t.Errorf("secrets.%s is configured but %s is not set", key, env)
		}
	}
	if name := str(dig(values, "secrets", "existingSecret")); name != "" && str(dig(secretVolume, "secret", "secretName")) != name {
		t.Errorf("the secrets volume uses Secret %q, want the existing Secret %q", dig(secretVolume, "secret", "secretName"), name)
	}

	// The store.
	store := namedItem(list(c["env"]), "PLEO_PROXY_STORE")
	if str(dig(values, "store", "type")) == "postgres" {
		ref := dig(store, "valueFrom", "secretKeyRef")
		if ref == nil || str(dig(ref, "name")) == "" || str(dig(ref, "key")) == "" {
			t.Errorf("postgres store: PLEO_PROXY_STORE = %v, want valueFrom.secretKeyRef", store)
		}
		return
	}
	if got := str(store["value"]); got != "file://"+dataDir+"/credentials.json" {
		t.Errorf("PLEO_PROXY_STORE = %q, want file://%s/credentials.json", got, dataDir)
	}
	var dataMount obj
	for _, m := range mounts {
		if str(m.(obj)["mountPath"]) == dataDir {
			dataMount = m.(obj)
		}
	}
	if dataMount == nil {
		t.Fatalf("the file store directory %s is not mounted", dataDir)
	}
	vol := namedItem(volumes, str(dataMount["name"]))
	switch kind := str(dig(values, "store", "file", "volume")); kind {
	case "secret":
		if dataMount["readOnly"] != true || dig(vol, "secret", "secretName") == nil {
			t.Errorf("store.file.volume secret: mount %v, volume %v; want a read-only Secret volume", dataMount, vol)
		}
	case "persistentVolumeClaim":
		if str(dig(vol, "persistentVolumeClaim", "claimName")) == "" {
			t.Errorf("store.file.volume persistentVolumeClaim: volume %v has no claimName", vol)
		}
	default:
		if dig(vol, "emptyDir") == nil {
			t.Errorf("store.file.volume %q: volume %v, want emptyDir", kind, vol)
		}
	}
	if dataMount["readOnly"] == true && str(dig(values, "store", "file", "volume")) != "secret" {
		t.Error("a writable file store is mounted read-only")
	}
}

// checkChartSecret checks the Secret the chart creates: base64 data holding exactly the
// configured values (so they are wired, yet never inline).
func checkChartSecret(t *testing.T, docs []doc, values obj) {
	t.Helper()
	want := map[string]string{}
	if str(dig(values, "secrets", "existingSecret")) == "" {
		for key, file := range map[string]string{"oauthClientSecret": "oauth-client-secret", "encryptionKey": "encryption-key", "adminToken": "admin-token", "connectKey": "connect-key"} {
			if s := str(dig(values, "secrets", key)); s != "" {
				want[file] = s
			}
		}
		var tokens []string
		for _, tok := range list(dig(values, "secrets", "clientTokens")) {
			tokens = append(tokens, str(tok))
		}
		if len(tokens) > 0 {
			want["client-tokens"] = strings.Join(tokens, "\n")
		}
	}
	if dsn := str(dig(values, "store", "postgres", "dsn")); dsn != "" && str(dig(values, "store", "type")) == "postgres" {
		want["postgres-dsn"] = dsn
	}
	secrets := ofKind(docs, "Secret")
	if len(want) == 0 {
		if len(secrets) != 0 {
			t.Errorf("no secret is configured but the chart rendered Secrets %v", names(secrets))
		}
		return
	}
	if len(secrets) != 1 {
		t.Fatalf("the chart rendered %d Secrets, want 1", len(secrets))
	}
	data, _ := dig(secrets[0].Body, "data").(obj)
	got := map[string]string{}
	for k, v := range data {
		b, err := base64.StdEncoding.DecodeString(str(v))
		if err != nil {
			t.Errorf("Secret data %s is not base64: %v", k, err)
		}
		got[k] = string(b)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Secret data (decoded) = %q, want %q", got, want)
	}
}

// checkOptionalResources checks that each optional resource renders exactly when enabled,
// with the expected content.
func checkOptionalResources(t *testing.T, docs []doc, values obj) {
	t.Helper()
	standalone := flag(values, "standalone", "enabled")
	for kind, enabled := range map[string]bool{
		"ServiceMonitor": flag(values, "serviceMonitor", "enabled"),
		"PodMonitor":     flag(values, "podMonitor", "enabled"),
		"PrometheusRule": flag(values, "prometheusRule", "enabled"),
		"ConfigMap":      flag(values, "grafanaDashboard", "enabled"),
		"NetworkPolicy":  flag(values, "networkPolicy", "enabled"),
		"Deployment":     standalone,
		"Service":        standalone,
		"ServiceAccount": standalone,
		"PersistentVolumeClaim": str(dig(values, "store", "type")) != "postgres" &&
			str(dig(values, "store", "file", "volume")) == "persistentVolumeClaim" &&
			str(dig(values, "store", "file", "persistentVolumeClaim", "existingClaim")) == "",
	} {
		got := len(ofKind(docs, kind))
		switch {
		case enabled && got != 1:
			t.Errorf("%s: rendered %d, want 1 (enabled)", kind, got)
		case !enabled && got != 0:
			t.Errorf("%s: rendered %d, want 0 (not enabled)", kind, got)
		}
	}

	for _, pm := range ofKind(docs, "PodMonitor") {
		ep := list(dig(pm.Body, "spec", "podMetricsEndpoints"))
		if len(ep) != 1 || str(dig(ep[0], "port")) != "pleo-admin" || str(dig(ep[0], "path")) != "/metrics" {
			t.Errorf("PodMonitor endpoints = %v, want port pleo-admin path /metrics", ep)
		}
		sel := dig(pm.Body, "spec", "selector", "matchLabels")
		if want := dig(values, "podMonitor", "selector"); want != nil && len(want.(obj)) > 0 && !reflect.DeepEqual(sel, want) {
			t.Errorf("PodMonitor selector = %v, want %v", sel, want)
		}
		if len(sel.(obj)) == 0 {
			t.Error("PodMonitor selects every pod")
		}
	}
	for _, sm := range ofKind(docs, "ServiceMonitor") {
		ep := list(dig(sm.Body, "spec", "endpoints"))
		if len(ep) != 1 || str(dig(ep[0], "port")) != "admin" || str(dig(ep[0], "path")) != "/metrics" {
			t.Errorf("ServiceMonitor endpoints = %v, want port admin path /metrics", ep)
		}
	}
	for _, pr := range ofKind(docs, "PrometheusRule") {
		var want obj
		b, err := os.ReadFile(alertsFile)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(pr.Body["spec"], want) {
			t.Errorf("PrometheusRule spec differs from %s", alertsFile)
		}
	}
	for _, cm := range ofKind(docs, "ConfigMap") {
		if got := dig(cm.Body, "metadata", "labels", "grafana_dashboard"); got != "1" {
			t.Errorf("dashboard ConfigMap label grafana_dashboard = %v, want \"1\"", got)
		}
		want, err := os.ReadFile(dashboardSrc)
		if err != nil {
			t.Fatal(err)
		}
		if got := str(dig(cm.Body, "data", "pleo-auth-proxy.json")); strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
			t.Errorf("dashboard ConfigMap data differs from %s", dashboardSrc)
		}
	}
}

// renderParent renders a chart that depends on pleo-auth-proxy and includes its sidecar
// templates in its own Deployment, as the chart's README tells users to, with values as the
// subchart's values.
func renderParent(t *testing.T, values obj, helmArgs ...string) string {
	t.Helper()
	dir := t.TempDir()
	sub := filepath.Join(dir, "charts", chartName)
	if err := os.CopyFS(sub, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("Chart.yaml", `apiVersion: v2
name: parent-app
version: 1.0.0
appVersion: "1.0.0"
dependencies:
  - name: pleo-auth-proxy
    version: ">=0.0.0-0"
    repository: file://../pleo-auth-proxy
`)
	write("templates/deployment.yaml", parentDeployment)
	v, err := yaml.Marshal(obj{chartName: values})
	if err != nil {
		t.Fatal(err)
	}
	write("parent-values.yaml", string(v))
	return mustHelm(t, append([]string{"template", releaseName, dir, "--namespace", releaseNS, "-f", filepath.Join(dir, "parent-values.yaml")}, helmArgs...)...)
}

// parentDeployment is the README's example of adding the sidecar to an existing chart.
const parentDeployment = `{{- $proxy := index .Subcharts "pleo-auth-proxy" }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-app
spec:
  selector:
    matchLabels:
      app.kubernetes.io/name: parent-app
  template:
    metadata:
      labels:
        app.kubernetes.io/name: parent-app
    spec:
      securityContext:
        fsGroup: 65532
      initContainers:
        {{- include "pleo-auth-proxy.initContainers" $proxy | nindent 8 }}
      containers:
        - name: app
          image: registry.example.com/erp-sync:1.0.0
          env:
            - name: PLEO_API_URL
              value: {{ include "pleo-auth-proxy.url" $proxy | quote }}
          volumeMounts:
            - name: app-config
              mountPath: /etc/app
        {{- include "pleo-auth-proxy.containers" $proxy | nindent 8 }}
      volumes:
        - name: app-config
          configMap:
            name: app-config
        {{- include "pleo-auth-proxy.sidecarVolumes" $proxy | nindent 8 }}
`

// parentWithExplicitForms is a parent chart that places the container itself, in the form it
// chooses, with the explicit templates.
const parentWithExplicitForms = `{{- $proxy := index .Subcharts "pleo-auth-proxy" }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .Release.Name }}-native-job
spec:
  template:
    spec:
      restartPolicy: Never
      initContainers:
        {{- include "pleo-auth-proxy.nativeSidecar" $proxy | nindent 8 }}
      containers:
        - name: app
          image: registry.example.com/erp-export:1.0.0
      volumes:
        {{- include "pleo-auth-proxy.sidecarVolumes" $proxy | nindent 8 }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-classic
spec:
  selector:
    matchLabels:
      app.kubernetes.io/name: parent-app
  template:
    metadata:
      labels:
        app.kubernetes.io/name: parent-app
    spec:
      containers:
        - name: app
          image: registry.example.com/erp-sync:1.0.0
        {{- include "pleo-auth-proxy.classicSidecar" $proxy | nindent 8 }}
      volumes:
        {{- include "pleo-auth-proxy.sidecarVolumes" $proxy | nindent 8 }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-is-native
data:
  isNative: {{ include "pleo-auth-proxy.isNative" $proxy | quote }}
`

// TestSidecarFormFollowsKubernetesVersion: sidecar.native auto (the default) places the
// container as a native sidecar (initContainers, restartPolicy Always, no shutdown delay) on
// Kubernetes 1.29 and later and as a classic one (containers, a 5s shutdown delay) before;
// true and false force the form; config.shutdownDelay overrides the delay; the explicit
// templates render their form whatever the setting.
func TestSidecarFormFollowsKubernetesVersion(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		native      any // sidecar.native; nil: the default
		kubeVersion string
		delay       string // config.shutdownDelay
		wantNative  bool
	}{
		{nil, "", "", false},       // helm template's default version, 1.20
		{nil, "1.28.9", "", false}, // before native sidecars were on by default
		{nil, "1.29.0", "", true},  // beta, on by default
		{nil, "v1.33.1", "", true}, // GA
		{"auto", "1.30.0", "", true},
		{false, "1.33.0", "", false},
		{true, "1.28.0", "", true},  // forced (the feature gate is the user's affair)
		{nil, "1.33.0", "3s", true}, // an explicit delay wins
		{false, "1.33.0", "12s", false},
	} {
		name := fmt.Sprintf("native %v kube %s delay %s", tc.native, tc.kubeVersion, tc.delay)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			values := obj{}
			if tc.native != nil {
				values["sidecar"] = obj{"native": tc.native}
			}
			if tc.delay != "" {
				values["config"] = obj{"shutdownDelay": tc.delay}
			}
			var args []string
			if tc.kubeVersion != "" {
				args = []string{"--kube-version", tc.kubeVersion}
			}
			docs := parseDocs(t, renderParent(t, values, args...))
			var app *doc
			for _, d := range ofKind(docs, "Deployment") {
				if d.Name == releaseName+"-app" {
					app = &d
				}
			}
			if app == nil {
				t.Fatal("no Deployment rendered")
			}
			checkPodSpecForm(t, dig(app.Body, "spec", "template", "spec").(obj), values, false, tc.wantNative)
		})
	}

	// The explicit templates: a native sidecar in a Job's initContainers and a classic one
	// in containers, on the same cluster, whatever sidecar.native says.
	for _, native := range []any{"auto", true, false} {
		t.Run(fmt.Sprintf("explicit forms native %v", native), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			sub := filepath.Join(dir, "charts", chartName)
			if err := os.CopyFS(sub, os.DirFS(chartDir)); err != nil {
				t.Fatal(err)
			}
			files := map[string]string{
				"Chart.yaml":               "apiVersion: v2\nname: parent-app\nversion: 1.0.0\ndependencies:\n  - name: pleo-auth-proxy\n    version: \">=0.0.0-0\"\n",
				"templates/workloads.yaml": parentWithExplicitForms,
			}
			for name, content := range files {
				p := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			docs := parseDocs(t, mustHelm(t, "template", releaseName, dir, "--kube-version", "1.33.0",
				"--set", fmt.Sprintf("pleo-auth-proxy.sidecar.native=%v", native)))
			values := obj{"sidecar": obj{"native": native}}
			for _, d := range docs {
				switch d.Kind {
				case "Job":
					checkPodSpecForm(t, dig(d.Body, "spec", "template", "spec").(obj), values, false, true)
				case "Deployment":
					checkPodSpecForm(t, dig(d.Body, "spec", "template", "spec").(obj), values, false, false)
				case "ConfigMap":
					want := map[any]string{"auto": "true", true: "true", false: ""}[native]
					if got := str(dig(d.Body, "data", "isNative")); got != want {
						t.Errorf("isNative = %q, want %q", got, want)
					}
				}
			}
			if len(ofKind(docs, "Job")) != 1 || len(ofKind(docs, "Deployment")) != 1 {
				t.Errorf("rendered %v, want the Job and the Deployment", names(docs))
			}
		})
	}
}

// ---------------------------------------------------------------------------------------
// Failures

func TestDefaultValuesRenderNoWorkloadOrOptionalResource(t *testing.T) {
	t.Parallel()
	mustHelm(t, "lint", "--strict", chartDir)
	docs := parseDocs(t, mustHelm(t, "template", releaseName, chartDir, "--namespace", releaseNS))
	checkOptionalResources(t, docs, readValues(t, filepath.Join(chartDir, "values.yaml")))
	if len(docs) != 0 {
		t.Errorf("default values rendered %v; want nothing (sidecar mode, no secrets, emptyDir store)", docs)
	}
}

func TestInvalidValuesAreRejectedBySchema(t *testing.T) {
	t.Parallel()
	const invalid = "testdata/invalid-values.yaml"
	for _, args := range [][]string{
		{"lint", "--strict", chartDir, "-f", invalid},
		{"template", releaseName, chartDir, "-f", invalid},
	} {
		out, errOut, err := runHelm(t, args...)
		if err == nil {
			t.Errorf("helm %s succeeded; want the schema to reject %s", args[0], invalid)
			continue
		}
		if !strings.Contains(out+errOut, "schema") {
			t.Errorf("helm %s failed, but not on the schema:\n%s%s", args[0], errOut, out)
		}
	}
}

func TestStandaloneWithoutClientTokensFailsToRender(t *testing.T) {
	t.Parallel()
	for _, extra := range [][]string{
		nil,
		// An existing Secret that does not say which key holds the tokens is no better.
		{"--set", "secrets.existingSecret=mine", "--set", "secrets.existingSecretKeys.adminToken=admin"},
	} {
		args := append([]string{"template", releaseName, chartDir, "--set", "standalone.enabled=true"}, extra...)
		out, errOut, err := runHelm(t, args...)
		if err == nil {
			t.Errorf("helm %s rendered; want it to fail without client tokens:\n%s", strings.Join(args, " "), out)
			continue
		}
		if !strings.Contains(errOut, "client token") {
			t.Errorf("helm %s failed, but not naming the client tokens:\n%s", strings.Join(args, " "), errOut)
		}
	}
	// The same values with client tokens render.
	mustHelm(t, "template", releaseName, chartDir, "--set", "standalone.enabled=true", "--set", "secrets.clientTokens={FAKE-token}")
}

func TestConfigurationsThatCannotWorkFailToRender(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		set  []string
		want string
	}{
		{"file store with replicas", []string{"standalone.enabled=true", "secrets.clientTokens={t}", "standalone.replicaCount=2"}, "store.type: postgres"},
		{"postgres without a DSN", []string{"store.type=postgres"}, "store.postgres"},
		{"postgres DSN twice", []string{"store.type=postgres", "store.postgres.dsn=postgres://x", "store.postgres.existingSecret=db"}, "not both"},
		{"secret store without a Secret", []string{"store.file.volume=secret"}, "secretName"},
		{"existingSecret and values", []string{"secrets.existingSecret=mine", "secrets.adminToken=FAKE"}, "existingSecret"},
		{"existingSecretKeys without existingSecret", []string{"secrets.existingSecretKeys.adminToken=admin"}, "existingSecret"},
		{"ServiceMonitor in sidecar mode", []string{"serviceMonitor.enabled=true"}, "podMonitor"},
		{"PodMonitor in sidecar mode without a selector", []string{"podMonitor.enabled=true"}, "podMonitor.selector"},
		{"NetworkPolicy in sidecar mode", []string{"networkPolicy.enabled=true"}, "standalone"},
		{"consent flow without a client", []string{"connect.enabled=true"}, "config.oauthClientID"},
		{"consent flow without a link key", []string{"connect.enabled=true", "config.oauthClientID=c", "config.oauthScopes=s",
			"config.oauthRedirectURL=https://c.example.com/callback", "secrets.oauthClientSecret=FAKE"}, "secrets.connectKey"},
		{"sidecar.native neither auto, true nor false", []string{"sidecar.native=sometimes"}, "native"},
		{"shutdown delay not a duration", []string{"config.shutdownDelay=soon"}, "shutdownDelay"},
	} {
		args := []string{"template", releaseName, chartDir}
		for _, s := range tc.set {
			args = append(args, "--set", s)
		}
		_, errOut, err := runHelm(t, args...)
		if err == nil {
			t.Errorf("%s: rendered; want a failure", tc.name)
		} else if !strings.Contains(errOut, tc.want) {
			t.Errorf("%s: failed without mentioning %q:\n%s", tc.name, tc.want, errOut)
		}
	}
}

// TestNotesRender renders NOTES.txt (which helm template skips) for every ci values file: a
// broken NOTES.txt would only show at helm install.
func TestNotesRender(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	notes, err := os.ReadFile(filepath.Join(dir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	wrapped := `{{- define "test.notes" }}` + string(notes) + `{{- end }}`
	if err := os.WriteFile(filepath.Join(dir, "templates", "_test_notes.tpl"), []byte(wrapped), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "templates", "NOTES.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "templates", "test-notes.yaml"), []byte(`notes: {{ include "test.notes" . | toJson }}`), 0o644); err != nil {
		t.Fatal(err)
	}
	files := append(ciValuesFiles(t), "")
	for _, file := range files {
		args := []string{"template", releaseName, dir, "--namespace", releaseNS, "--show-only", "templates/test-notes.yaml"}
		want := "Sidecar mode"
		if file != "" {
			args = append(args, "-f", file)
			if flag(readValues(t, file), "standalone", "enabled") {
				want = "Proxy-Authorization"
			}
		}
		out := mustHelm(t, args...)
		var n struct{ Notes string }
		if err := yaml.Unmarshal([]byte(out), &n); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if !strings.Contains(n.Notes, want) {
			t.Errorf("NOTES.txt with %q does not say %q:\n%s", file, want, n.Notes)
		}
		if file != "" {
			assertNoSecretInline(t, n.Notes, secretValues(readValues(t, file)))
		}
	}
}

// ---------------------------------------------------------------------------------------
// Monitoring files

// TestChartMonitoringFilesAreCopiesOfDeploy keeps one source for the alerts and the
// dashboard: the chart renders its copies, which must equal deploy/'s byte for byte.
func TestChartMonitoringFilesAreCopiesOfDeploy(t *testing.T) {
	t.Parallel()
	for src, dup := range map[string]string{
		alertsFile:   filepath.Join(chartDir, "files", "alerts.yaml"),
		dashboardSrc: filepath.Join(chartDir, "files", "dashboard.json"),
	} {
		a, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(dup)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs from %s; run: cp %s %s (from charts/)", dup, src, src, dup)
		}
	}
}

// contractMetrics are the metric names of docs/reference.md and the metrics package
// export (histograms without their _bucket/_sum/_count suffixes).
var contractMetrics = []string{
	"pleo_proxy_requests_total", "pleo_proxy_request_duration_seconds", "pleo_proxy_upstream_requests_total",
	"pleo_proxy_auth_retries_total", "pleo_proxy_token_refreshes_total", "pleo_proxy_token_refresh_duration_seconds",
	"pleo_proxy_credential_cache_lookups_total", "pleo_proxy_credentials", "pleo_proxy_errors_total",
	"pleo_proxy_credentials_expiring", "pleo_proxy_store_operation_duration_seconds", "pleo_proxy_store_errors_total",
	"pleo_proxy_store_reload_failures_total", "pleo_proxy_pending_token_writes", "pleo_proxy_in_flight_requests",
	"pleo_proxy_refresh_lock_wait_seconds", "pleo_proxy_token_age_at_refresh_seconds",
	"pleo_proxy_connects_total", "pleo_proxy_connect_failures_total",
	"pleo_proxy_client_connections", "pleo_proxy_client_connection_waits_total",
}

func TestMonitoringFilesUseContractMetricNames(t *testing.T) {
	t.Parallel()
	name := regexp.MustCompile(`pleo_proxy_[a-z_]+`)
	for _, file := range []string{alertsFile, dashboardSrc} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range name.FindAllString(string(b), -1) {
			base := m
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				base = strings.TrimSuffix(base, suffix)
			}
			if !slices.Contains(contractMetrics, base) && !slices.Contains(contractMetrics, m) {
				t.Errorf("%s uses %s, which is not a metric the sidecar exports", file, m)
			}
		}
	}
}

// TestAlertsAreComplete checks every alert the issue asks for: severity, summary,
// description and runbook, and at least one firing and one silent case in alerts_test.yaml.
func TestAlertsAreComplete(t *testing.T) {
	t.Parallel()
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string
				Expr        string
				Labels      map[string]string
				Annotations map[string]string
			}
		}
	}
	b, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string
				ExpAlerts []any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		}
	}
	b, err = os.ReadFile(alertsTest)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &tests); err != nil {
		t.Fatal(err)
	}
	firing, silent := map[string]int{}, map[string]int{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				firing[a.Alertname]++
			} else {
				silent[a.Alertname]++
			}
		}
	}
	defined := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			defined[r.Alert] = true
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
				t.Errorf("%s: severity label %q", r.Alert, r.Labels["severity"])
			}
			for _, a := range []string{"summary", "description", "runbook", "runbook_url"} {
				if r.Annotations[a] == "" {
					t.Errorf("%s: no %s annotation", r.Alert, a)
				}
			}
			if firing[r.Alert] == 0 || silent[r.Alert] == 0 {
				t.Errorf("%s: %d firing and %d silent cases in %s; want at least one of each", r.Alert, firing[r.Alert], silent[r.Alert], alertsTest)
			}
		}
	}
	for _, want := range []string{
		"PleoProxyReauthorizationRequired", "PleoProxyTokenRefreshErrors", "PleoProxyAuthRetriesFailing",
		"PleoProxy5xxRatio", "PleoProxyAPIKeyExpiring", "PleoProxyStoreErrors",
		"PleoProxyPendingTokenWrites", "PleoProxyCredentialsExpired",
	} {
		if !defined[want] {
			t.Errorf("alert %s is not defined in %s", want, alertsFile)
		}
	}
}

// ---------------------------------------------------------------------------------------
// Dockerfile

func TestDockerfile(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines and drop comments, then split into instructions.
	text := regexp.MustCompile(`\\\r?\n`).ReplaceAllString(string(b), " ")
	type instr struct{ op, args string }
	var instrs []instr
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		op, args, _ := strings.Cut(line, " ")
		instrs = append(instrs, instr{strings.ToUpper(op), strings.Join(strings.Fields(args), " ")})
	}
	var froms []string
	var finalStage []instr
	for _, in := range instrs {
		if in.op == "FROM" {
			froms = append(froms, in.args)
			finalStage = nil
		}
		finalStage = append(finalStage, in)
	}
	if len(froms) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a build stage and a final stage", len(froms))
	}
	if !strings.Contains(froms[0], "golang:") {
		t.Errorf("the build stage is FROM %q, want a golang image", froms[0])
	}
	final := strings.Fields(froms[len(froms)-1])
	if len(final) == 0 || final[0] != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("the final stage is FROM %q, want gcr.io/distroless/static-debian12:nonroot", froms[len(froms)-1])
	}
	last := func(op string) string {
		v := ""
		for _, in := range finalStage {
			if in.op == op {
				v = in.args
			}
		}
		return v
	}
	if u := last("USER"); u != "nonroot" && u != "65532" && !strings.HasPrefix(u, "65532:") && !strings.HasPrefix(u, "nonroot:") {
		t.Errorf("the final stage runs as USER %q, want nonroot or 65532", u)
	}
	if got := last("ENTRYPOINT"); got != `["/pleo-auth-proxy"]` {
		t.Errorf("ENTRYPOINT %s, want [\"/pleo-auth-proxy\"]", got)
	}
	if got := last("CMD"); got != `["serve"]` {
		t.Errorf("CMD %s, want [\"serve\"]", got)
	}
	if hc := last("HEALTHCHECK"); !strings.Contains(hc, `CMD ["/pleo-auth-proxy", "healthcheck"]`) {
		t.Errorf("HEALTHCHECK %q, want CMD [\"/pleo-auth-proxy\", \"healthcheck\"]", hc)
	}
	if v := last("VOLUME"); v != dataDir {
		t.Errorf("VOLUME %q, want %s", v, dataDir)
	}
	if e := last("EXPOSE"); !strings.Contains(e, "7380") || !strings.Contains(e, "7381") {
		t.Errorf("EXPOSE %q, want 7380 and 7381", e)
	}
	var build string
	for _, in := range instrs {
		if in.op == "RUN" && strings.Contains(in.args, "go build") {
			build = in.args
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=${VERSION}", "-s -w"} {
		if !strings.Contains(build, want) {
			t.Errorf("the go build step %q lacks %s", build, want)
		}
	}
	hasArg := false
	for _, in := range instrs {
		hasArg = hasArg || in.op == "ARG" && strings.HasPrefix(in.args, "VERSION")
	}
	if !hasArg {
		t.Error("no ARG VERSION")
	}
	labels := 0
	for _, in := range finalStage {
		if in.op == "LABEL" {
			labels += strings.Count(in.args, "org.opencontainers.image.")
		}
	}
	if labels < 3 {
		t.Errorf("the final stage has %d org.opencontainers.image.* labels, want the usual ones", labels)
	}

	ignore, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".git", ".env"} {
		if !slices.Contains(strings.Fields(string(ignore)), want) {
			t.Errorf(".dockerignore does not exclude %s", want)
		}
	}
}

// The consent flow's link key: a connect key or an encryption key to derive it from, each
// mounted as a _FILE; without either, only an explicit connect.unsignedLinks renders, and it
// reaches the container.
func TestConnectLinkKeyRenders(t *testing.T) {
	t.Parallel()
	base := []string{"template", releaseName, chartDir, "--set", "standalone.enabled=true", "--set", "secrets.clientTokens={FAKE-t}",
		"--set", "connect.enabled=true", "--set", "config.oauthClientID=c", "--set", "config.oauthScopes=s",
		"--set", "config.oauthRedirectURL=https://c.example.com/callback", "--set", "secrets.oauthClientSecret=FAKE-s"}
	for _, tc := range []struct {
		name     string
		set      []string
		file     string // the _FILE variable set
		unsigned bool
	}{
		{"connect key", []string{"secrets.connectKey=" + strings.Repeat("A", 44)}, "PLEO_PROXY_CONNECT_KEY_FILE", false},
		{"derived from the encryption key", []string{"secrets.encryptionKey=" + strings.Repeat("B", 43) + "="}, "PLEO_PROXY_ENCRYPTION_KEY_FILE", false},
		{"unsigned links", []string{"connect.unsignedLinks=true"}, "", true},
	} {
		args := slices.Clone(base)
		for _, s := range tc.set {
			args = append(args, "--set", s)
		}
		deps := ofKind(parseDocs(t, mustHelm(t, args...)), "Deployment")
		if len(deps) != 1 {
			t.Fatalf("%s: %d Deployments", tc.name, len(deps))
		}
		c := pleoContainer(t, dig(deps[0].Body, "spec", "template", "spec").(obj), false)
		if tc.file != "" && envValue(c, tc.file) == "" {
			t.Errorf("%s: %s not set", tc.name, tc.file)
		}
		if got := envValue(c, "PLEO_PROXY_CONNECT_UNSIGNED_LINKS"); (got == "true") != tc.unsigned {
			t.Errorf("%s: PLEO_PROXY_CONNECT_UNSIGNED_LINKS = %q", tc.name, got)
		}
	}
	// A connect key that is not base64 of at least 32 bytes is refused by the schema.
	if _, errOut, err := runHelm(t, append(slices.Clone(base), "--set", "secrets.connectKey=short")...); err == nil || !strings.Contains(errOut, "connectKey") {
		t.Errorf("a short connect key rendered: %v %s", err, errOut)
	}
}
