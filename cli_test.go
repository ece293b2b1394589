package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/mockpleo"
)

// The credentials CLI, through the built binary: exit codes 0 (ok), 1 (failure), 2 (usage).

func cliCompany(n int) string { return fmt.Sprintf("77f00000-0000-4000-8000-%012d", n) }

// cliKey returns a deterministic encryption key and its PLEO_PROXY_ENCRYPTION_KEY form.
func cliKey(n int) ([]byte, string) {
	sum := sha256.Sum256([]byte(fmt.Sprintf("cli test key %d", n)))
	return sum[:], base64.StdEncoding.EncodeToString(sum[:])
}

// cliEnv returns an environment for a store in a new directory, encrypted with keys (given as
// PLEO_PROXY_ENCRYPTION_KEY text) when set, and the store's path.
func cliEnv(t *testing.T, keys string) ([]string, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "credentials.json")
	return cliEnvFor(path, keys), path
}

func cliEnvFor(path, keys string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "PLEO_PROXY_STORE=file://" + path}
	if keys != "" {
		env = append(env, "PLEO_PROXY_ENCRYPTION_KEY="+keys)
	}
	return env
}

func mustCLI(t *testing.T, env []string, stdin string, args ...string) string {
	t.Helper()
	out, stderr, code := runCLI(t, env, stdin, args...)
	if code != 0 {
		t.Fatalf("%v: exit %d: %s", args, code, stderr)
	}
	return out
}

// cliList runs `credentials list --json`.
func cliList(t *testing.T, env []string) []map[string]any {
	t.Helper()
	out := mustCLI(t, env, "", "credentials", "list", "--json")
	var doc struct {
		Credentials []map[string]any `json:"credentials"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	return doc.Credentials
}

// cliSealedKeyIDs returns the key ids of the sealed values in the store file.
func cliSealedKeyIDs(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Encryption  *credentials.FileEncryption `json:"encryption"`
		Credentials []credentials.Record        `json:"credentials"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Encryption == nil {
		t.Fatalf("%s is not encrypted:\n%s", path, data)
	}
	var ids []string
	for _, r := range doc.Credentials {
		for _, v := range []string{r.AccessToken, r.RefreshToken, r.APIKey} {
			if v == "" {
				continue
			}
			id, err := credentials.SealedKeyID(v)
			if err != nil {
				t.Fatalf("a value in %s is not sealed: %v", path, err)
			}
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

func TestCLIPut(t *testing.T) {
	_, key := cliKey(1)
	const apiKey = "cli-api-key-0123456789-abcdefghij"
	cases := []struct {
		name    string
		keys    string
		stdin   string
		keyFile string // content of a --key-file
		args    []string
		want    map[string]any
	}{
		{"standard input", "", apiKey + "\n", "", []string{"--type", "integrated_api_key"},
			map[string]any{"type": "integrated_api_key", "state": "active"}},
		{"key file", "", "ignored-stdin", apiKey + "\r\n", []string{"--type", "standalone_api_key", "--tenant", "erp-7", "--expires-at", "2099-01-01T00:00:00+01:00"},
			map[string]any{"type": "standalone_api_key", "tenant_id": "erp-7", "expires_at": "2098-12-31T23:00:00Z"}},
		{"encrypted, standard input", key, apiKey, "", []string{"--type", "standalone_api_key"},
			map[string]any{"type": "standalone_api_key"}},
		{"encrypted, key file", key, "", apiKey, []string{"--type", "integrated_api_key", "--tenant", "t"},
			map[string]any{"type": "integrated_api_key", "tenant_id": "t"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env, path := cliEnv(t, tc.keys)
			args := append([]string{"credentials", "put", "--company", strings.ToUpper(cliCompany(1))}, tc.args...)
			if tc.keyFile != "" {
				kf := filepath.Join(t.TempDir(), "key")
				if err := os.WriteFile(kf, []byte(tc.keyFile), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append(args, "--key-file", kf)
			}
			out := mustCLI(t, env, tc.stdin, args...)
			if strings.Contains(out, apiKey) || !strings.Contains(out, cliCompany(1)) {
				t.Errorf("put printed %q", out)
			}
			list := cliList(t, env)
			if len(list) != 1 || list[0]["company_id"] != cliCompany(1) {
				t.Fatalf("list = %v", list)
			}
			for k, v := range tc.want {
				if list[0][k] != v {
					t.Errorf("%s = %v, want %v", k, list[0][k], v)
				}
			}
			// The store holds exactly the key (trimmed), sealed when a key is configured.
			var sealer *credentials.Sealer
			if tc.keys != "" {
				k, _ := cliKey(1)
				sealer, _ = credentials.NewSealer([][]byte{k})
			}
			s, err := credentials.OpenFileStore(path, credentials.FileStoreOptions{Sealer: sealer, PollInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			c, err := s.Get(t.Context(), cliCompany(1))
			if err != nil || c.APIKey.Reveal() != apiKey {
				t.Errorf("stored key = %q, %v", c.APIKey.Reveal(), err)
			}
			data, _ := os.ReadFile(path)
			if tc.keys != "" && strings.Contains(string(data), apiKey) {
				t.Errorf("the encrypted store holds the key in the clear")
			}
		})
	}
}

// put takes no key from the command line: there is no flag for it, and a positional argument
// is refused without echoing it.
func TestCLIPutRefusesKeyOnCommandLine(t *testing.T) {
	const secret = "argv-secret-key-value-42"
	cases := [][]string{
		{"--type", "integrated_api_key", secret},
		{"--type", "integrated_api_key", "--api-key", secret},
		{"--type", "integrated_api_key", "--api-key=" + secret},
		{"--type", "integrated_api_key", "--key", secret},
		{"--type", "integrated_api_key", "--", secret},
	}
	for _, args := range cases {
		t.Run(strings.Join(args[2:], " "), func(t *testing.T) {
			env, path := cliEnv(t, "")
			out, stderr, code := runCLI(t, env, "stdin-key", append([]string{"credentials", "put", "--company", cliCompany(1)}, args...)...)
			if code != 2 {
				t.Errorf("exit %d, want 2 (usage)", code)
			}
			if strings.Contains(stderr+out, secret) {
				t.Errorf("the key was echoed: %q %q", out, stderr)
			}
			if !strings.Contains(stderr, "usage: credentials put") {
				t.Errorf("stderr %q has no usage line", stderr)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Errorf("the store was written: %v", err)
			}
		})
	}
}

func TestCLIExitCodes(t *testing.T) {
	_, key := cliKey(1)
	company := cliCompany(1)
	encEnv, encPath := cliEnv(t, key)
	mustCLI(t, encEnv, "k1", "credentials", "put", "--company", cliCompany(9), "--type", "integrated_api_key")
	cases := []struct {
		name   string
		env    []string // nil: a fresh plain store
		stdin  string
		args   []string
		code   int
		stderr string // in stderr; for code 0, in stdout
	}{
		{"no subcommand", nil, "", []string{"credentials"}, 2, "needs a subcommand"},
		{"unknown subcommand", nil, "", []string{"credentials", "frob"}, 2, "unknown credentials subcommand"},
		{"unknown flag", nil, "", []string{"credentials", "list", "--bogus"}, 2, "usage: credentials list"},
		{"help", nil, "", []string{"credentials", "list", "-h"}, 0, "usage: credentials list"},
		{"list", nil, "", []string{"credentials", "list"}, 0, "COMPANY_ID"},
		{"import without file", nil, "", []string{"credentials", "import"}, 2, "usage: credentials import"},
		{"import missing file", nil, "", []string{"credentials", "import", "/nonexistent/creds.json"}, 1, "no such file"},
		{"import bad document", nil, "{", []string{"credentials", "import", "-"}, 1, "nothing written"},
		{"delete not a uuid", nil, "", []string{"credentials", "delete", "nope"}, 2, "usage: credentials delete"},
		{"delete unknown", nil, "", []string{"credentials", "delete", company}, 1, "no credential for company"},
		{"put without company", nil, "k", []string{"credentials", "put", "--type", "integrated_api_key"}, 2, "--company"},
		{"put bad company", nil, "k", []string{"credentials", "put", "--company", "x", "--type", "integrated_api_key"}, 2, "--company"},
		{"put without type", nil, "k", []string{"credentials", "put", "--company", company}, 2, "--type"},
		{"put oauth2", nil, "k", []string{"credentials", "put", "--company", company, "--type", "oauth2"}, 2, "credentials import"},
		{"put bad expiry", nil, "k", []string{"credentials", "put", "--company", company, "--type", "integrated_api_key", "--expires-at", "tomorrow"}, 2, "RFC 3339"},
		{"put past expiry", nil, "k", []string{"credentials", "put", "--company", company, "--type", "integrated_api_key", "--expires-at", "2001-01-01T00:00:00Z"}, 2, "not in the future"},
		{"put empty stdin", nil, "", []string{"credentials", "put", "--company", company, "--type", "integrated_api_key"}, 1, "no key on standard input"},
		{"put missing key file", nil, "", []string{"credentials", "put", "--company", company, "--type", "integrated_api_key", "--key-file", "/nonexistent/key"}, 1, "--key-file"},
		{"put key with a space", nil, "two words\n", []string{"credentials", "put", "--company", company, "--type", "integrated_api_key"}, 1, "whitespace"},
		{"put ok", nil, "k", []string{"credentials", "put", "--company", company, "--type", "integrated_api_key"}, 0, "stored"},
		{"rotate-key without a key", nil, "", []string{"credentials", "rotate-key"}, 1, "no encryption key is configured"},
		{"rotate-key with an argument", nil, "", []string{"credentials", "rotate-key", "now"}, 2, "usage: credentials rotate-key"},
		{"encrypted store without a key", cliEnvFor(encPath, ""), "", []string{"credentials", "list"}, 1, "is encrypted"},
		{"encrypted store with the wrong key", cliEnvFor(encPath, func() string { _, k := cliKey(2); return k }()), "", []string{"credentials", "list"}, 1, "not configured"},
		{"bad encryption key", nil, "", []string{"credentials", "list"}, 1, "PLEO_PROXY_ENCRYPTION_KEY"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := tc.env
			if env == nil {
				env, _ = cliEnv(t, "")
			}
			if tc.name == "bad encryption key" {
				env = append(env, "PLEO_PROXY_ENCRYPTION_KEY=c2hvcnQ=")
			}
			out, stderr, code := runCLI(t, env, tc.stdin, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stdout %q stderr %q", code, tc.code, out, stderr)
			}
			where := stderr
			if tc.code == 0 {
				where = out
			} else if !strings.HasPrefix(stderr, "pleo-auth-proxy: ") {
				t.Errorf("stderr %q does not start with the program name", stderr)
			}
			if !strings.Contains(where, tc.stderr) {
				t.Errorf("output %q does not mention %q", where, tc.stderr)
			}
		})
	}
}

// Rotation through the CLI: written with OLD; NEW,OLD reads; rotate-key rewrites with NEW;
// NEW alone reads, OLD alone does not.
func TestCLIRotateKey(t *testing.T) {
	oldRaw, oldKey := cliKey(1)
	newRaw, newKey := cliKey(2)
	envOld, path := cliEnv(t, oldKey)
	doc := `{"credentials": [
  {"company_id": "` + cliCompany(1) + `", "type": "oauth2", "access_token": "at-secret-1", "refresh_token": "rt-secret-1"},
  {"company_id": "` + cliCompany(2) + `", "type": "integrated_api_key", "api_key": "ik-secret-2"}]}`
	mustCLI(t, envOld, doc, "credentials", "import", "-")
	if ids := cliSealedKeyIDs(t, path); !slices.Equal(ids, []string{credentials.KeyID(oldRaw)}) {
		t.Fatalf("imported with keys %v", ids)
	}

	envBoth := cliEnvFor(path, newKey+","+oldKey)
	if list := cliList(t, envBoth); len(list) != 2 {
		t.Fatalf("NEW,OLD lists %v", list)
	}
	out := mustCLI(t, envBoth, "", "credentials", "rotate-key")
	want := fmt.Sprintf("re-encrypted 2 credential(s) with key %s", credentials.KeyID(newRaw))
	if !strings.Contains(out, want) || !strings.Contains(out, credentials.KeyID(oldRaw)) {
		t.Errorf("rotate-key printed %q, want %q and the old key's id", out, want)
	}
	if ids := cliSealedKeyIDs(t, path); !slices.Equal(ids, []string{credentials.KeyID(newRaw)}) {
		t.Errorf("after rotate-key the values are sealed with %v", ids)
	}
	if list := cliList(t, cliEnvFor(path, newKey)); len(list) != 2 {
		t.Errorf("NEW alone lists %v", list)
	}
	if _, stderr, code := runCLI(t, envOld, "", "credentials", "list"); code != 1 || !strings.Contains(stderr, "not configured") {
		t.Errorf("OLD alone after rotation: exit %d %q, want 1 naming the missing key", code, stderr)
	}

	// A plain store is encrypted by rotate-key.
	envPlain, plainPath := cliEnv(t, "")
	mustCLI(t, envPlain, doc, "credentials", "import", "-")
	mustCLI(t, cliEnvFor(plainPath, newKey), "", "credentials", "rotate-key")
	if ids := cliSealedKeyIDs(t, plainPath); !slices.Equal(ids, []string{credentials.KeyID(newRaw)}) {
		t.Errorf("a plain store after rotate-key: keys %v", ids)
	}
	data, _ := os.ReadFile(plainPath)
	for _, s := range []string{"at-secret-1", "rt-secret-1", "ik-secret-2"} {
		if bytes.Contains(data, []byte(s)) {
			t.Errorf("the rotated store still holds %s", s)
		}
	}
}

// import against an existing (encrypted) store: every record is validated, against the store
// too, before anything is written; a failure leaves the file byte for byte as it was.
func TestCLIImportAllOrNothing(t *testing.T) {
	_, key := cliKey(1)
	env, path := cliEnv(t, key)
	mustCLI(t, env, "existing-key", "credentials", "put", "--company", cliCompany(1), "--type", "integrated_api_key", "--tenant", "tenant-1")
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rec := func(n int, tenant string) string {
		return fmt.Sprintf(`{"company_id": %q, "tenant_id": %q, "type": "integrated_api_key", "api_key": "new-key-%d"}`, cliCompany(n), tenant, n)
	}
	cases := []struct {
		name, doc, want string
	}{
		{"invalid second record", `{"credentials": [` + rec(2, "") + `, {"company_id": "nope", "type": "oauth2"}]}`, "record 1"},
		{"tenant taken by a stored company", `{"credentials": [` + rec(2, "") + `, ` + rec(3, "tenant-1") + `]}`, "tenant_id is already used"},
		{"duplicate company", `{"credentials": [` + rec(2, "") + `, ` + rec(2, "x") + `]}`, "duplicates record 0"},
		{"unknown field", `{"credentials": [` + rec(2, "") + `], "extra": 1}`, "unknown field"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runCLI(t, env, tc.doc, "credentials", "import", "-")
			if code != 1 || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "nothing written") {
				t.Errorf("exit %d, stderr %q; want 1, %q and \"nothing written\"", code, stderr, tc.want)
			}
			if strings.Contains(stderr, "new-key") {
				t.Errorf("stderr leaks a key: %q", stderr)
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
				t.Error("the store changed")
			}
		})
	}
	// A valid import adds to the store; --replace replaces it.
	mustCLI(t, env, `{"credentials": [`+rec(2, "")+`, `+rec(3, "tenant-3")+`]}`, "credentials", "import", "-")
	if list := cliList(t, env); len(list) != 3 {
		t.Errorf("after import: %v", list)
	}
	docFile := filepath.Join(t.TempDir(), "import.json")
	if err := os.WriteFile(docFile, []byte(`{"credentials": [`+rec(4, "tenant-1")+`]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, env, "", "credentials", "import", "--replace", docFile)
	if list := cliList(t, env); len(list) != 1 || list[0]["company_id"] != cliCompany(4) {
		t.Errorf("after import --replace: %v", list)
	}
}

func TestCLIListShowsNoSecret(t *testing.T) {
	_, key := cliKey(1)
	for _, keys := range []string{"", key} {
		t.Run(fmt.Sprintf("encrypted=%v", keys != ""), func(t *testing.T) {
			env, _ := cliEnv(t, keys)
			secrets := []string{"list-access-token-0001", "list-refresh-token-0001", "list-api-key-0002"}
			doc := `{"credentials": [
  {"company_id": "` + cliCompany(1) + `", "tenant_id": "erp", "type": "oauth2", "access_token": "` + secrets[0] + `",
   "refresh_token": "` + secrets[1] + `", "expires_at": "2026-11-28T12:00:00Z"}]}`
			mustCLI(t, env, doc, "credentials", "import", "-")
			mustCLI(t, env, secrets[2], "credentials", "put", "--company", cliCompany(2), "--type", "standalone_api_key")
			jsonOut := mustCLI(t, env, "", "credentials", "list", "--json")
			table := mustCLI(t, env, "", "credentials", "list")
			for _, out := range []string{jsonOut, table} {
				for _, s := range secrets {
					if strings.Contains(out, s) || strings.Contains(out, base64.StdEncoding.EncodeToString([]byte(s))) {
						t.Errorf("list shows a secret:\n%s", out)
					}
				}
			}
			list := cliList(t, env)
			if len(list) != 2 || list[0]["tenant_id"] != "erp" || list[0]["expires_at"] != "2026-11-28T12:00:00Z" || list[1]["type"] != "standalone_api_key" {
				t.Errorf("list --json = %v", list)
			}
			for _, c := range list {
				for k := range c {
					if strings.Contains(k, "token") || strings.Contains(k, "key") {
						t.Errorf("list --json has a field %q", k)
					}
				}
			}
			if !strings.Contains(table, cliCompany(2)) || !strings.Contains(table, "standalone_api_key") {
				t.Errorf("table:\n%s", table)
			}
		})
	}
}

// serve with a key reads the encrypted store, and a reload that does not decrypt keeps it
// serving, turns /readyz to 503 and counts in pleo_proxy_store_reload_failures_total.
func TestServeEncryptedStoreBadReload(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("Authorization"))
	}))
	defer upstream.Close()
	_, key := cliKey(1)
	_, otherKey := cliKey(2)
	env, path := cliEnv(t, key)
	mustCLI(t, env, "serve-api-key", "credentials", "put", "--company", cliCompany(1), "--type", "integrated_api_key")

	cmd := exec.Command(binary(t), "serve")
	cmd.Env = append(env, "PLEO_PROXY_UPSTREAM_URL="+upstream.URL, "PLEO_PROXY_LISTEN_ADDR=127.0.0.1:0",
		"PLEO_PROXY_ADMIN_ADDR=127.0.0.1:0", "PLEO_PROXY_STORE_POLL_INTERVAL=50ms")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	addrs := make(chan []string, 1)
	go func() {
		re := regexp.MustCompile(`listen=(\S+) admin=(\S+)`)
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			if m := re.FindStringSubmatch(s.Text()); m != nil {
				addrs <- m[1:]
			}
		}
	}()
	var dataAddr, adminAddr string
	select {
	case a := <-addrs:
		dataAddr, adminAddr = a[0], a[1]
	case <-time.After(10 * time.Second):
		t.Fatal("no start line")
	}
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(url string, hdr ...string) (int, string) {
		req, _ := http.NewRequest("GET", url, nil)
		if len(hdr) == 2 {
			req.Header.Set(hdr[0], hdr[1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	proxied := func() string {
		code, body := get("http://"+dataAddr+"/v1/x", "X-Pleo-Company-Id", cliCompany(1))
		if code != 200 {
			t.Fatalf("proxied request: %d %s", code, body)
		}
		return body
	}
	if got := proxied(); got != credentials.BasicAuthorization("serve-api-key") {
		t.Fatalf("upstream saw %q", got)
	}
	if code, body := get("http://" + adminAddr + "/readyz"); code != 200 {
		t.Fatalf("/readyz: %d %s", code, body)
	}

	// Another key's file replaces the store.
	other := filepath.Join(t.TempDir(), "credentials.json")
	mustCLI(t, cliEnvFor(other, otherKey), "other-api-key", "credentials", "put", "--company", cliCompany(1), "--type", "integrated_api_key")
	data, _ := os.ReadFile(other)
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		code, body := get("http://" + adminAddr + "/readyz")
		return code == 503 && strings.Contains(body, "not configured")
	})
	waitFor(t, func() bool {
		_, body := get("http://" + adminAddr + "/metrics")
		m := regexp.MustCompile(`(?m)^pleo_proxy_store_reload_failures_total ([0-9.e+]+)$`).FindStringSubmatch(body)
		return m != nil && m[1] != "0"
	})
	if got := proxied(); got != credentials.BasicAuthorization("serve-api-key") {
		t.Errorf("after the bad reload the upstream saw %q, want the last good key", got)
	}
}

// put --discover-company learns the company from GET {upstream}/v1/installations/me with the
// key as HTTP Basic user name (the mock Pleo checks it as Pleo would).
func TestCLIPutDiscoverCompany(t *testing.T) {
	const apiKey = "discovered-integrated-key-0123456789"
	company := cliCompany(7)
	mock := mockpleo.New(mockpleo.Options{})
	mock.AddAPIKey(company, apiKey, time.Time{})
	var paths []string
	var mu sync.Mutex
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.Method+" "+r.URL.Path)
		mu.Unlock()
		mock.Handler().ServeHTTP(w, r)
	}))
	defer upstream.Close()

	cases := []struct {
		name     string
		stdin    string
		args     []string
		code     int
		stderr   string // expected in stderr
		stored   bool
		upstream bool // whether the upstream is asked
	}{
		{name: "discovered", stdin: apiKey + "\n", args: []string{"--discover-company", "--type", "integrated_api_key", "--tenant", "erp-9"}, stored: true, upstream: true},
		{name: "discovered, matching --company", stdin: apiKey, args: []string{"--discover-company", "--company", strings.ToUpper(company), "--type", "integrated_api_key"}, stored: true, upstream: true},
		{name: "--company names another company", stdin: apiKey, args: []string{"--discover-company", "--company", cliCompany(8), "--type", "integrated_api_key"},
			code: 1, stderr: "belongs to company " + company, upstream: true},
		{name: "key refused", stdin: "not-a-key-pleo-knows", args: []string{"--discover-company", "--type", "integrated_api_key"},
			code: 1, stderr: "refused the key (401)", upstream: true},
		{name: "no company and no discovery", stdin: apiKey, args: []string{"--type", "integrated_api_key"},
			code: 2, stderr: "--discover-company"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			paths = nil
			mu.Unlock()
			env, path := cliEnv(t, "")
			env = append(env, "PLEO_PROXY_UPSTREAM_URL="+upstream.URL)
			out, stderr, code := runCLI(t, env, tc.stdin, append([]string{"credentials", "put"}, tc.args...)...)
			if code != tc.code || !strings.Contains(stderr, tc.stderr) {
				t.Fatalf("exit %d (want %d), stderr %q (want %q)", code, tc.code, stderr, tc.stderr)
			}
			if strings.Contains(out+stderr, apiKey) {
				t.Fatal("the key was printed")
			}
			mu.Lock()
			asked := slices.Equal(paths, []string{"GET /v1/installations/me"})
			none := len(paths) == 0
			mu.Unlock()
			if tc.upstream && !asked || !tc.upstream && !none {
				t.Fatalf("upstream saw %v", paths)
			}
			if !tc.stored {
				if _, err := os.Stat(path); !os.IsNotExist(err) {
					t.Fatalf("the store was written: %v", err)
				}
				return
			}
			if !strings.Contains(out, company) || !strings.Contains(out, "installations/me") {
				t.Errorf("put printed %q", out)
			}
			list := cliList(t, env)
			if len(list) != 1 || list[0]["company_id"] != company || list[0]["type"] != "integrated_api_key" {
				t.Fatalf("list = %v", list)
			}
		})
	}
}
