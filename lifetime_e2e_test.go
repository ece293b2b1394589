package main

// Credentials over their lifetime, through the built binary (issue 19): secret files rotated
// without a restart, and a plaintext credentials file refused when an encryption key is set.
// The authorisation and resource server is internal/oauthtest (fosite): a wrong client secret
// is refused with invalid_client, as Pleo refuses it.

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/oauthtest"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

const (
	lifetimeCompany = "11fe0000-0000-4000-8000-000000000001"
	lifetimeOther   = "11fe0000-0000-4000-8000-000000000002"
)

// withoutVar returns env without the variable name.
func withoutVar(env []string, name string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// writeRenamed replaces path atomically: a new file renamed over it.
func writeRenamed(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// kubeSecretVolume is a directory laid out as the kubelet lays out a Secret volume: each key
// a symbolic link to ..data/<key>, ..data a symbolic link to a timestamped directory that an
// update replaces by renaming a new link over ..data.
type kubeSecretVolume struct {
	t       *testing.T
	dir     string
	version int
}

func newKubeSecretVolume(t *testing.T, files map[string]string) *kubeSecretVolume {
	v := &kubeSecretVolume{t: t, dir: t.TempDir()}
	v.update(files)
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(v.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

func (v *kubeSecretVolume) path(name string) string { return filepath.Join(v.dir, name) }

// update writes a new timestamped directory with files and swaps ..data to it.
func (v *kubeSecretVolume) update(files map[string]string) {
	t := v.t
	t.Helper()
	v.version++
	ts := fmt.Sprintf("..2026_12_04_00_00_%02d.%d", v.version, v.version)
	if err := os.Mkdir(filepath.Join(v.dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(v.dir, ts, name), []byte(content), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// getStatus sends one request for company to the sidecar and returns the status.
func getStatus(t *testing.T, s *sidecar, company string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.data+"/v1/export-jobs", nil)
	req.Header.Set("X-Pleo-Company-Id", company)
	resp, err := faultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// adminCredentials asks GET /credentials with the admin token and returns the status.
func adminCredentials(t *testing.T, s *sidecar, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.admin+"/credentials", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := faultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func logsOf(s *sidecar) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

// writeCredentials writes creds to path in the plain format.
func writeCredentials(t *testing.T, path string, creds ...credentials.Credential) {
	t.Helper()
	data, err := credentials.Marshal(creds)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// The OAuth client secret and the admin token, given as files, are rotated while the sidecar
// runs: a refresh refused with invalid_client under the wrong secret succeeds once the file
// holds the right one (replaced by write and rename, then by a Kubernetes ..data swap), the
// admin endpoint takes the new token and refuses the old, and a file rewritten with garbage
// or emptied keeps the current value, logged and counted as an error. No secret is logged.
func TestLifetimeE2ESecretFilesRotateWithoutRestart(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	dir := t.TempDir()
	store := filepath.Join(dir, "credentials.json")
	// Expired locally: the first request refreshes.
	writeCredentials(t, store, grantedCredential(t, srv, lifetimeCompany, time.Now().Add(-time.Minute)))

	const (
		wrongSecret = "wrong-client-secret-0001"
		oldAdmin    = "admin-token-old-0000000001"
		newAdmin    = "admin-token-new-0000000002"
	)
	secretFile := filepath.Join(dir, "client_secret")
	writeRenamed(t, secretFile, wrongSecret+"\n")
	vol := newKubeSecretVolume(t, map[string]string{"admin-token": oldAdmin + "\n"})

	env := withoutVar(oauthSidecarEnv(srv, "file://"+store), "PLEO_PROXY_OAUTH_CLIENT_SECRET")
	env = append(env,
		"PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE="+secretFile,
		"PLEO_PROXY_ADMIN_TOKEN_FILE="+vol.path("admin-token"),
		"PLEO_PROXY_STORE_POLL_INTERVAL=200ms")
	s := startSidecar(t, env)

	if code := getStatus(t, s, lifetimeCompany); code == http.StatusOK {
		t.Fatalf("a refresh with the wrong client secret answered %d", code)
	}
	if st := srv.Stats(); st.RefreshCalls != 1 {
		t.Fatalf("%d refresh calls, want 1 (refused with invalid_client)", st.RefreshCalls)
	}
	// The log line is read from the process's stderr by another goroutine: wait for it.
	testenv.WaitFor(t, "the refusal logged as invalid_client", 5*time.Second, func() bool {
		return strings.Contains(logsOf(s), "invalid_client")
	})

	// The right secret, by write and rename.
	writeRenamed(t, secretFile, srv.ClientSecret()+"\n")
	testenv.WaitFor(t, "a refresh with the rotated client secret", 10*time.Second, func() bool {
		return getStatus(t, s, lifetimeCompany) == http.StatusOK
	})
	okReloads := `pleo_proxy_secret_reloads_total{result="success",secret="oauth_client_secret"}`
	if v := metricValue(t, s, okReloads); v != 1 {
		t.Fatalf("%s = %v, want 1", okReloads, v)
	}

	// The admin token, by a Kubernetes ..data swap.
	if code := adminCredentials(t, s, oldAdmin); code != http.StatusOK {
		t.Fatalf("the old admin token before the swap: %d", code)
	}
	if code := adminCredentials(t, s, newAdmin); code != http.StatusUnauthorized {
		t.Fatalf("the new admin token before the swap: %d", code)
	}
	vol.update(map[string]string{"admin-token": newAdmin + "\n"})
	testenv.WaitFor(t, "the new admin token to be taken", 10*time.Second, func() bool {
		return adminCredentials(t, s, newAdmin) == http.StatusOK
	})
	if code := adminCredentials(t, s, oldAdmin); code != http.StatusUnauthorized {
		t.Fatalf("the old admin token after the swap: %d, want 401", code)
	}

	// Garbage (a token with a space) and an empty file keep the current token.
	errReloads := `pleo_proxy_secret_reloads_total{result="error",secret="admin_token"}`
	for i, bad := range []string{"not a token", "\n"} {
		vol.update(map[string]string{"admin-token": bad})
		testenv.WaitFor(t, "the bad file to be counted", 10*time.Second, func() bool {
			return metricValue(t, s, errReloads) == float64(i+1)
		})
		if code := adminCredentials(t, s, newAdmin); code != http.StatusOK {
			t.Fatalf("%q: the current admin token answered %d", bad, code)
		}
	}
	logs := logsOf(s)
	if !strings.Contains(logs, "cannot reload a secret file") || !strings.Contains(logs, "PLEO_PROXY_ADMIN_TOKEN_FILE") {
		t.Errorf("the bad file is not logged:\n%s", logs)
	}
	// The secret file with the right secret again, by a ..data swap this time, and a restart
	// is not needed for the refresh either: revoke the access token to force one.
	srv.RevokeAccessTokens(lifetimeCompany)
	if code := getStatus(t, s, lifetimeCompany); code != http.StatusOK {
		t.Fatalf("a refresh after the rotations: %d", code)
	}
	for _, secret := range []string{wrongSecret, srv.ClientSecret(), oldAdmin, newAdmin} {
		if strings.Contains(logs, secret) {
			t.Errorf("a secret reached the log: %s", secret)
		}
	}
	if st := srv.Stats(); st.ReuseDetections != 0 || st.InvalidGrants != 0 {
		t.Fatalf("%d reuse detections, %d invalid grants", st.ReuseDetections, st.InvalidGrants)
	}
}

// The client secret file itself in a Kubernetes Secret volume: a ..data swap to the right
// secret lets the refused refresh succeed.
func TestLifetimeE2EClientSecretKubernetesSwap(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	dir := t.TempDir()
	store := filepath.Join(dir, "credentials.json")
	writeCredentials(t, store, grantedCredential(t, srv, lifetimeCompany, time.Now().Add(-time.Minute)))
	vol := newKubeSecretVolume(t, map[string]string{"client-secret": "wrong-client-secret-0002"})
	env := withoutVar(oauthSidecarEnv(srv, "file://"+store), "PLEO_PROXY_OAUTH_CLIENT_SECRET")
	env = append(env, "PLEO_PROXY_OAUTH_CLIENT_SECRET_FILE="+vol.path("client-secret"), "PLEO_PROXY_STORE_POLL_INTERVAL=200ms")
	s := startSidecar(t, env)
	if code := getStatus(t, s, lifetimeCompany); code == http.StatusOK {
		t.Fatalf("a refresh with the wrong client secret answered %d", code)
	}
	vol.update(map[string]string{"client-secret": srv.ClientSecret()})
	testenv.WaitFor(t, "a refresh with the swapped client secret", 10*time.Second, func() bool {
		return getStatus(t, s, lifetimeCompany) == http.StatusOK
	})
}

// With PLEO_PROXY_ENCRYPTION_KEY set, a plaintext credentials file put in place of the
// encrypted one is refused: /readyz answers 503 with the reason, requests are served from
// the last good credentials, nothing from the plaintext file is served and nothing is written
// over it; the encrypted file put back makes the sidecar ready again. Started on a plaintext
// file, the sidecar is not ready, serves nothing and logs the fix.
func TestLifetimeE2EPlaintextRefusedWithKey(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	_, key := cliKey(19)
	dir := t.TempDir()
	store := filepath.Join(dir, "credentials.json")
	good := grantedCredential(t, srv, lifetimeCompany, time.Now().Add(time.Hour))
	doc, err := credentials.Marshal([]credentials.Credential{good})
	if err != nil {
		t.Fatal(err)
	}
	keyEnv := cliEnvFor(store, key)
	mustCLI(t, keyEnv, string(doc), "credentials", "import", "-") // written encrypted
	encrypted, err := os.ReadFile(store)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(encrypted, []byte(good.RefreshToken.Reveal())) {
		t.Fatal("the imported store is not encrypted")
	}
	env := oauthSidecarEnv(srv, "file://"+store, "PLEO_PROXY_ENCRYPTION_KEY="+key, "PLEO_PROXY_STORE_POLL_INTERVAL=200ms")
	s := startSidecar(t, env)
	if code := getStatus(t, s, lifetimeCompany); code != http.StatusOK {
		t.Fatalf("before: %d", code)
	}

	// Someone puts a plaintext file in place (an old backup, a hand edit).
	plain, err := credentials.Marshal([]credentials.Credential{good, grantedCredential(t, srv, lifetimeOther, time.Now().Add(time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	writeRenamed(t, store, string(plain))
	testenv.WaitFor(t, "readiness to refuse the plaintext file", 10*time.Second, func() bool {
		code, body := readyz(t, s)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "not encrypted")
	})
	if code := getStatus(t, s, lifetimeCompany); code != http.StatusOK {
		t.Fatalf("the last good credential is not served: %d", code)
	}
	if code := getStatus(t, s, lifetimeOther); code == http.StatusOK {
		t.Fatal("a credential from the plaintext file was served")
	}
	if after, _ := os.ReadFile(store); !bytes.Equal(after, plain) {
		t.Fatal("the plaintext file was written over")
	}

	writeRenamed(t, store, string(encrypted))
	testenv.WaitFor(t, "readiness after the encrypted file is back", 10*time.Second, func() bool {
		code, _ := readyz(t, s)
		return code == http.StatusOK
	})
	if code := getStatus(t, s, lifetimeCompany); code != http.StatusOK {
		t.Fatalf("after the restore: %d", code)
	}

	// Started on a plaintext file: not ready, nothing served, the fix logged.
	writeRenamed(t, store, string(plain))
	s.kill(t)
	s2 := startSidecar(t, env)
	code, body := readyz(t, s2)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "not encrypted") {
		t.Fatalf("started on a plaintext file: /readyz %d %s", code, body)
	}
	if code := getStatus(t, s2, lifetimeCompany); code == http.StatusOK {
		t.Fatal("a credential from the plaintext file was served at start-up")
	}
	if !strings.Contains(logsOf(s2), "credentials migrate --from file://"+store) {
		t.Errorf("the start-up log does not name the fix:\n%s", logsOf(s2))
	}
	// The operator encrypts it on purpose; the running sidecar picks it up.
	mustCLI(t, keyEnv, "", "credentials", "rotate-key")
	testenv.WaitFor(t, "readiness after rotate-key", 10*time.Second, func() bool {
		code, _ := readyz(t, s2)
		return code == http.StatusOK
	})
	if code := getStatus(t, s2, lifetimeOther); code != http.StatusOK {
		t.Fatalf("after rotate-key: %d", code)
	}
	if strings.Contains(logsOf(s)+logsOf(s2), good.RefreshToken.Reveal()) {
		t.Error("a refresh token reached the log")
	}
}

// getWithToken sends one request for company with a client token and returns the status.
func getWithToken(t *testing.T, s *sidecar, company, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.data+"/v1/export-jobs", nil)
	req.Header.Set("X-Pleo-Company-Id", company)
	req.Header.Set("Proxy-Authorization", "Bearer "+token)
	resp, err := faultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// PLEO_PROXY_CLIENT_TOKENS_FILE rotated: the old token is refused (407) and the new one
// accepted, without a restart.
func TestLifetimeE2EClientTokensFileRotates(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	dir := t.TempDir()
	store := filepath.Join(dir, "credentials.json")
	writeCredentials(t, store, grantedCredential(t, srv, lifetimeCompany, time.Now().Add(time.Hour)))
	const oldToken, newToken = "client-token-old-00000001", "client-token-new-00000002"
	tokens := filepath.Join(dir, "client-tokens")
	writeRenamed(t, tokens, oldToken+"\n")
	s := startSidecar(t, oauthSidecarEnv(srv, "file://"+store, "PLEO_PROXY_CLIENT_TOKENS_FILE="+tokens, "PLEO_PROXY_STORE_POLL_INTERVAL=200ms"))
	if code := getWithToken(t, s, lifetimeCompany, oldToken); code != http.StatusOK {
		t.Fatalf("the old token before the rotation: %d", code)
	}
	writeRenamed(t, tokens, "other-token-0000000003\n"+newToken+"\n")
	testenv.WaitFor(t, "the new client token to be taken", 10*time.Second, func() bool {
		return getWithToken(t, s, lifetimeCompany, newToken) == http.StatusOK
	})
	if code := getWithToken(t, s, lifetimeCompany, oldToken); code != http.StatusProxyAuthRequired {
		t.Fatalf("the old token after the rotation: %d, want 407", code)
	}
	if v := metricValue(t, s, `pleo_proxy_secret_reloads_total{result="success",secret="client_tokens"}`); v != 1 {
		t.Fatalf("client_tokens reloads = %v, want 1", v)
	}
}

// PLEO_PROXY_ENCRYPTION_KEY_FILE rotated while the sidecar runs: the file gets NEW,OLD, the
// operator re-seals the store with NEW (credentials rotate-key, another process); the sidecar
// reads the re-sealed file (whichever of the two it notices first), keeps serving, and its
// own writes seal with NEW. A key file holding garbage keeps the keys in use.
func TestLifetimeE2EEncryptionKeyFileRotates(t *testing.T) {
	srv := oauthtest.NewServer(t, oauthtest.Options{})
	dir := t.TempDir()
	store := filepath.Join(dir, "credentials.json")
	_, oldKey := cliKey(191)
	rawNew, newKey := cliKey(192)
	keyFile := filepath.Join(dir, "encryption-key")
	writeRenamed(t, keyFile, oldKey+"\n")
	cliEnv := []string{"PATH=" + os.Getenv("PATH"), "PLEO_PROXY_STORE=file://" + store, "PLEO_PROXY_ENCRYPTION_KEY_FILE=" + keyFile}
	doc, err := credentials.Marshal([]credentials.Credential{grantedCredential(t, srv, lifetimeCompany, time.Now().Add(time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	mustCLI(t, cliEnv, string(doc), "credentials", "import", "-")
	s := startSidecar(t, oauthSidecarEnv(srv, "file://"+store, "PLEO_PROXY_ENCRYPTION_KEY_FILE="+keyFile, "PLEO_PROXY_STORE_POLL_INTERVAL=200ms"))
	if code := getStatus(t, s, lifetimeCompany); code != http.StatusOK {
		t.Fatalf("before: %d", code)
	}

	writeRenamed(t, keyFile, newKey+","+oldKey+"\n")
	mustCLI(t, cliEnv, "", "credentials", "rotate-key")
	if ids := cliSealedKeyIDs(t, store); !slices.Equal(ids, []string{credentials.KeyID(rawNew)}) {
		t.Fatalf("rotate-key sealed with %v", ids)
	}
	ok := `pleo_proxy_secret_reloads_total{result="success",secret="encryption_key"}`
	testenv.WaitFor(t, "the new keys and the re-sealed file", 10*time.Second, func() bool {
		code, _ := readyz(t, s)
		return metricValue(t, s, ok) == 1 && code == http.StatusOK
	})
	// A refresh: the sidecar writes the file, with the newest key.
	srv.RevokeAccessTokens(lifetimeCompany)
	if code := getStatus(t, s, lifetimeCompany); code != http.StatusOK {
		t.Fatalf("a refresh after the rotation: %d\n%s", code, logsOf(s))
	}
	if ids := cliSealedKeyIDs(t, store); !slices.Equal(ids, []string{credentials.KeyID(rawNew)}) {
		t.Fatalf("the sidecar wrote with %v", ids)
	}

	writeRenamed(t, keyFile, "not-a-key\n")
	bad := `pleo_proxy_secret_reloads_total{result="error",secret="encryption_key"}`
	testenv.WaitFor(t, "the garbage key file to be counted", 10*time.Second, func() bool { return metricValue(t, s, bad) == 1 })
	srv.RevokeAccessTokens(lifetimeCompany)
	if code := getStatus(t, s, lifetimeCompany); code != http.StatusOK {
		t.Fatalf("a refresh after a garbage key file: %d", code)
	}
	if ids := cliSealedKeyIDs(t, store); !slices.Equal(ids, []string{credentials.KeyID(rawNew)}) {
		t.Fatalf("after a garbage key file the sidecar wrote with %v", ids)
	}
	if logs := logsOf(s); strings.Contains(logs, newKey) || strings.Contains(logs, oldKey) {
		t.Error("a key reached the log")
	}
	if st := srv.Stats(); st.ReuseDetections != 0 || st.InvalidGrants != 0 {
		t.Fatalf("%d reuse detections, %d invalid grants", st.ReuseDetections, st.InvalidGrants)
	}
}
