package main

// credentials migrate, export and import of an encrypted document, through the built binary
// (and verifyMigrated directly). PostgreSQL tests need PLEO_PROXY_TEST_POSTGRES
// (scripts/with-postgres); without it they skip, except under CI=true, where they fail.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/internal/testenv"
)

// migrateRecord is one credential of the migrate tests' documents; secrets carry n, and
// refreshed its last_refreshed_at.
func migrateRecord(n int, refreshed time.Time) string {
	return fmt.Sprintf(`{"company_id": %q, "tenant_id": "tenant-%d", "type": "oauth2", "access_token": "mig-at-secret-%d",
		"refresh_token": "mig-rt-secret-%d", "expires_at": "2030-01-01T00:00:00.123456789Z", "last_refreshed_at": %q,
		"last_error": "err %d", "state": "active"}`, cliCompany(n), n, n, n, refreshed.UTC().Format(time.RFC3339Nano), n)
}

func migrateAPIKey(n int) string {
	return fmt.Sprintf(`{"company_id": %q, "type": "integrated_api_key", "api_key": "mig-ak-secret-%d"}`, cliCompany(n), n)
}

func migrateDoc(records ...string) string {
	return `{"credentials": [` + strings.Join(records, ",") + `]}`
}

// exported runs credentials export --reveal-secrets and returns the credentials by company.
func exported(t *testing.T, env []string) map[string]credentials.Credential {
	t.Helper()
	out := mustCLI(t, env, "", "credentials", "export", "--reveal-secrets")
	creds, err := credentials.Parse(strings.NewReader(out))
	if err != nil {
		t.Fatalf("export is not an import document: %v", err)
	}
	m := map[string]credentials.Credential{}
	for _, c := range creds {
		m[c.CompanyID] = c
	}
	return m
}

// sameCredentials fails unless got and want hold the same credentials, every field but the
// version compared, times to the microsecond.
func sameCredentials(t *testing.T, got, want map[string]credentials.Credential) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d credentials, want %d", len(got), len(want))
	}
	for id, w := range want {
		g, ok := got[id]
		w.ExpiresAt, w.LastRefreshedAt = migrateTime(w.ExpiresAt), migrateTime(w.LastRefreshedAt)
		g.ExpiresAt, g.LastRefreshedAt = migrateTime(g.ExpiresAt), migrateTime(g.LastRefreshedAt)
		if !ok {
			t.Fatalf("company %s missing", id)
		}
		if f := differingField(g, w); f != "" {
			t.Fatalf("company %s: %s differs", id, f)
		}
	}
}

func writeKeyFile(t *testing.T, key string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(p, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A plain file store migrated to an encrypted one (its key from a file), the reverse with
// --to-plain, and an encrypted one to another key: every record arrives, secrets and times
// included, and the targets are encrypted (or not) as asked.
func TestCLIMigrateFileStores(t *testing.T) {
	now := time.Now()
	doc := migrateDoc(migrateRecord(1, now), migrateAPIKey(2))
	plainEnv, plainPath := cliEnv(t, "")
	mustCLI(t, plainEnv, doc, "credentials", "import", "-")
	want := exported(t, plainEnv)

	_, keyA := cliKey(101)
	rawB, keyB := cliKey(102)
	encPath := filepath.Join(t.TempDir(), "encrypted.json")
	out := mustCLI(t, plainEnv, "", "credentials", "migrate", "--from", "file://"+plainPath, "--to", "file://"+encPath,
		"--to-encryption-key-file", writeKeyFile(t, keyB))
	if !strings.Contains(out, "migrated 2 credential(s)") || !strings.Contains(out, "verified") || !strings.Contains(out, credentials.KeyID(rawB)) {
		t.Fatalf("migrate printed %q", out)
	}
	if ids := cliSealedKeyIDs(t, encPath); !slices.Equal(ids, []string{credentials.KeyID(rawB)}) {
		t.Fatalf("the target is sealed with %v", ids)
	}
	sameCredentials(t, exported(t, cliEnvFor(encPath, keyB)), want)

	// Encrypted (key B, given by the environment to both sides... and overridden for the
	// target) to a new key A.
	encA := filepath.Join(t.TempDir(), "a.json")
	mustCLI(t, cliEnvFor(encPath, keyB), "", "credentials", "migrate", "--from", "file://"+encPath, "--to", "file://"+encA,
		"--to-encryption-key-file", writeKeyFile(t, keyA))
	sameCredentials(t, exported(t, cliEnvFor(encA, keyA)), want)

	// Back to plain, on purpose.
	plain2 := filepath.Join(t.TempDir(), "plain.json")
	mustCLI(t, cliEnvFor(encA, keyA), "", "credentials", "migrate", "--from", "file://"+encA, "--to", "file://"+plain2, "--to-plain")
	data, _ := os.ReadFile(plain2)
	if !bytes.Contains(data, []byte("mig-rt-secret-1")) || bytes.Contains(data, []byte(`"encryption"`)) {
		t.Fatalf("--to-plain did not write the plain format")
	}
	sameCredentials(t, exported(t, cliEnvFor(plain2, "")), want)
	for _, o := range []string{out} {
		if strings.Contains(o, "secret-") {
			t.Fatalf("migrate printed a secret: %q", o)
		}
	}
}

// A target that holds credentials is refused without --merge; with --merge a target record
// refreshed more recently than the source's is kept, with a warning, unless --force; a source
// with a record that does not decrypt writes nothing.
func TestCLIMigrateMergeAndAllOrNothing(t *testing.T) {
	older, newer := time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
	srcEnv, srcPath := cliEnv(t, "")
	mustCLI(t, srcEnv, migrateDoc(migrateRecord(1, older), migrateAPIKey(2)), "credentials", "import", "-")
	_, key := cliKey(103)
	dstEnv, dstPath := cliEnv(t, key)
	newerDoc := strings.ReplaceAll(migrateRecord(1, newer), "mig-rt-secret-1", "mig-rt-secret-1-newer")
	mustCLI(t, dstEnv, migrateDoc(newerDoc, migrateAPIKey(3)), "credentials", "import", "-")
	before, _ := os.ReadFile(dstPath)

	args := []string{"credentials", "migrate", "--from", "file://" + srcPath, "--to", "file://" + dstPath}
	_, stderr, code := runCLI(t, dstEnv, "", args...)
	if code != 1 || !strings.Contains(stderr, "already holds 2 credential(s)") || !strings.Contains(stderr, "--merge") {
		t.Fatalf("a non-empty target: exit %d %q", code, stderr)
	}
	if after, _ := os.ReadFile(dstPath); !bytes.Equal(after, before) {
		t.Fatal("the refused target changed")
	}

	out, stderr, code := runCLI(t, dstEnv, "", append(args, "--merge")...)
	if code != 0 || !strings.Contains(stderr, "warning: migrate: company "+cliCompany(1)) || !strings.Contains(stderr, "revoke") ||
		!strings.Contains(out, "migrated 1 credential(s)") || !strings.Contains(out, "kept 1 newer") {
		t.Fatalf("--merge: exit %d\nstdout %q\nstderr %q", code, out, stderr)
	}
	got := exported(t, dstEnv)
	if len(got) != 3 || got[cliCompany(1)].RefreshToken.Reveal() != "mig-rt-secret-1-newer" || got[cliCompany(2)].APIKey.Reveal() != "mig-ak-secret-2" {
		t.Fatalf("after --merge: %d credentials, company 1 kept: %v", len(got), got[cliCompany(1)].RefreshToken.Reveal() == "mig-rt-secret-1-newer")
	}
	_, stderr, code = runCLI(t, dstEnv, "", append(args, "--merge", "--force")...)
	if code != 0 || !strings.Contains(stderr, "replacing it (--force)") {
		t.Fatalf("--force: exit %d %q", code, stderr)
	}
	if got := exported(t, dstEnv); got[cliCompany(1)].RefreshToken.Reveal() != "mig-rt-secret-1" {
		t.Fatal("--force did not replace the newer record")
	}
	if strings.Contains(stderr, "secret-") {
		t.Fatalf("a secret reached stderr: %q", stderr)
	}

	// A corrupt source: one sealed value altered. Nothing is written.
	encEnv, encPath := cliEnv(t, key)
	mustCLI(t, encEnv, migrateDoc(migrateAPIKey(4), migrateAPIKey(5)), "credentials", "import", "-")
	var f map[string]any
	data, _ := os.ReadFile(encPath)
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	recs := f["credentials"].([]any)
	sealed := recs[1].(map[string]any)["api_key"].(string)
	recs[1].(map[string]any)["api_key"] = sealed[:len(sealed)-2] + map[bool]string{true: "AA", false: "BB"}[!strings.HasSuffix(sealed, "AA")]
	data, _ = json.Marshal(f)
	if err := os.WriteFile(encPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(t.TempDir(), "fresh.json")
	_, stderr, code = runCLI(t, encEnv, "", "credentials", "migrate", "--from", "file://"+encPath, "--to", "file://"+fresh)
	if code != 1 || !strings.Contains(stderr, "nothing written") || !strings.Contains(stderr, cliCompany(5)) {
		t.Fatalf("a corrupt source: exit %d %q", code, stderr)
	}
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Fatalf("a corrupt source wrote the target: %v", err)
	}

	// A source that holds nothing (a mistyped path) is refused.
	_, stderr, code = runCLI(t, encEnv, "", "credentials", "migrate", "--from", "file://"+encPath+".typo", "--to", "file://"+fresh)
	if code != 1 || !strings.Contains(stderr, "holds no credential") {
		t.Fatalf("an empty source: exit %d %q", code, stderr)
	}

	// Usage errors.
	for _, bad := range [][]string{
		{"--from", "file://" + srcPath},
		{"--from", "file://" + srcPath, "--to", "file://" + srcPath},
		{"--from", "file://" + srcPath, "--to", "file://" + fresh, "--force"},
		{"--from", "file://" + srcPath, "--to", "file://" + fresh, "--to-plain", "--to-encryption-key-file", "/x"},
	} {
		if _, stderr, code := runCLI(t, dstEnv, "", append([]string{"credentials", "migrate"}, bad...)...); code != 2 {
			t.Errorf("%v: exit %d %q, want 2", bad, code, stderr)
		}
	}
}

// verifyMigrated reads the target back and names the first field that differs, never its
// value.
func TestVerifyMigrated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.json")
	creds, err := credentials.Parse(strings.NewReader(migrateDoc(migrateRecord(1, time.Now()), migrateAPIKey(2))))
	if err != nil {
		t.Fatal(err)
	}
	for i := range creds {
		creds[i].ExpiresAt, creds[i].LastRefreshedAt = migrateTime(creds[i].ExpiresAt), migrateTime(creds[i].LastRefreshedAt)
	}
	s, err := credentials.OpenFileStore(path, credentials.FileStoreOptions{PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutAll(t.Context(), creds, false); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := verifyMigrated(t.Context(), "file://"+path, nil, creds); err != nil {
		t.Fatalf("an exact copy: %v", err)
	}
	for _, tc := range []struct {
		field string
		alter func(*credentials.Credential)
	}{
		{"refresh_token", func(c *credentials.Credential) { c.RefreshToken = "mig-rt-secret-other" }},
		{"access_token", func(c *credentials.Credential) { c.AccessToken = "mig-at-secret-other" }},
		{"expires_at", func(c *credentials.Credential) { c.ExpiresAt = c.ExpiresAt.Add(time.Microsecond) }},
		{"last_refreshed_at", func(c *credentials.Credential) { c.LastRefreshedAt = c.LastRefreshedAt.Add(-time.Second) }},
		{"tenant_id", func(c *credentials.Credential) { c.TenantID = "x" }},
		{"last_error", func(c *credentials.Credential) { c.LastError = "" }},
	} {
		want := slices.Clone(creds)
		tc.alter(&want[0])
		err := verifyMigrated(t.Context(), "file://"+path, nil, want)
		if err == nil || !strings.Contains(err.Error(), "different "+tc.field) {
			t.Errorf("%s: %v", tc.field, err)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the error holds a secret: %v", tc.field, err)
		}
	}
	want := append(slices.Clone(creds), credentials.Credential{CompanyID: cliCompany(9), Type: credentials.IntegratedAPIKey, APIKey: "k"})
	if err := verifyMigrated(t.Context(), "file://"+path, nil, want); err == nil || !strings.Contains(err.Error(), cliCompany(9)) {
		t.Errorf("a record missing from the target: %v", err)
	}
}

// Encrypted file -> PostgreSQL (sealed there with the configured key) -> encrypted file under
// another key: every record arrives; a non-empty database is refused.
func TestCLIMigratePostgres(t *testing.T) {
	dsn := testenv.PostgresDatabase(t, "migrate_")
	_, key := cliKey(104)
	rawC, keyC := cliKey(105)
	fileEnv, filePath := cliEnv(t, key)
	mustCLI(t, fileEnv, migrateDoc(migrateRecord(1, time.Now()), migrateAPIKey(2), migrateRecord(3, time.Now().Add(-time.Minute))),
		"credentials", "import", "-")
	want := exported(t, fileEnv)

	out := mustCLI(t, fileEnv, "", "credentials", "migrate", "--from", "file://"+filePath, "--to", dsn)
	if !strings.Contains(out, "migrated 3 credential(s)") || strings.Contains(out, "password") && !strings.Contains(out, "xxxxx") {
		t.Fatalf("to PostgreSQL: %q", out)
	}
	pgEnv := []string{"PATH=" + os.Getenv("PATH"), "PLEO_PROXY_STORE=" + dsn, "PLEO_PROXY_ENCRYPTION_KEY=" + key}
	sameCredentials(t, exported(t, pgEnv), want)
	if n := pgE2ECount(t, dsn, `SELECT count(*) FROM pleo_proxy_credentials WHERE refresh_token LIKE 'mig-%' OR api_key LIKE 'mig-%'`); n != 0 {
		t.Fatalf("%d rows hold a secret in the clear", n)
	}

	_, stderr, code := runCLI(t, fileEnv, "", "credentials", "migrate", "--from", "file://"+filePath, "--to", dsn)
	if code != 1 || !strings.Contains(stderr, "already holds 3") {
		t.Fatalf("a non-empty database: exit %d %q", code, stderr)
	}

	back := filepath.Join(t.TempDir(), "back.json")
	mustCLI(t, pgEnv, "", "credentials", "migrate", "--from", dsn, "--to", "file://"+back, "--to-encryption-key-file", writeKeyFile(t, keyC))
	if ids := cliSealedKeyIDs(t, back); !slices.Equal(ids, []string{credentials.KeyID(rawC)}) {
		t.Fatalf("the file from PostgreSQL is sealed with %v", ids)
	}
	sameCredentials(t, exported(t, cliEnvFor(back, keyC)), want)
}

// export refuses without --reveal-secrets, saying why, and prints nothing; with it, it prints
// an import document holding every secret, which imports into an empty store as it was.
func TestCLIExport(t *testing.T) {
	_, key := cliKey(106)
	env, _ := cliEnv(t, key)
	mustCLI(t, env, migrateDoc(migrateRecord(1, time.Now()), migrateAPIKey(2)), "credentials", "import", "-")
	out, stderr, code := runCLI(t, env, "", "credentials", "export")
	if code != 2 || out != "" || !strings.Contains(stderr, "--reveal-secrets") || !strings.Contains(stderr, "revoke") || !strings.Contains(stderr, "migrate") {
		t.Fatalf("export without --reveal-secrets: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	out = mustCLI(t, env, "", "credentials", "export", "--reveal-secrets")
	for _, s := range []string{"mig-at-secret-1", "mig-rt-secret-1", "mig-ak-secret-2", `"last_refreshed_at"`} {
		if !strings.Contains(out, s) {
			t.Fatalf("export lacks %s:\n%s", s, out)
		}
	}
	env2, _ := cliEnv(t, "")
	mustCLI(t, env2, out, "credentials", "import", "-")
	sameCredentials(t, exported(t, env2), exported(t, env))
}

// import reads the file store's encrypted format with the configured key or
// --from-encryption-key-file, refuses it without one, and warns when a record is older than
// the stored one.
func TestCLIImportEncryptedAndOlder(t *testing.T) {
	_, key := cliKey(107)
	srcEnv, srcPath := cliEnv(t, key)
	older := time.Now().Add(-time.Hour)
	mustCLI(t, srcEnv, migrateDoc(migrateRecord(1, older), migrateAPIKey(2)), "credentials", "import", "-")
	encrypted, _ := os.ReadFile(srcPath)

	dstEnv, _ := cliEnv(t, "")
	if _, stderr, code := runCLI(t, dstEnv, string(encrypted), "credentials", "import", "-"); code != 1 || !strings.Contains(stderr, "no encryption key") || !strings.Contains(stderr, "nothing written") {
		t.Fatalf("an encrypted document without its key: exit %d %q", code, stderr)
	}
	newer := strings.ReplaceAll(migrateRecord(1, time.Now()), "mig-rt-secret-1", "mig-rt-secret-1-newer")
	mustCLI(t, dstEnv, migrateDoc(newer), "credentials", "import", "-")
	out, stderr, code := runCLI(t, dstEnv, string(encrypted), "credentials", "import", "--from-encryption-key-file", writeKeyFile(t, key), "-")
	if code != 0 || !strings.Contains(out, "imported 2") || !strings.Contains(stderr, "warning: import: company "+cliCompany(1)) {
		t.Fatalf("an encrypted document with its key: exit %d %q %q", code, out, stderr)
	}
	if got := exported(t, dstEnv); got[cliCompany(2)].APIKey.Reveal() != "mig-ak-secret-2" {
		t.Fatal("the encrypted document was not imported")
	}
}
