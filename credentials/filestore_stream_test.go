package credentials

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// streamSeeds are the documents the streaming decoder is compared with parseFile on: the
// parsers' fuzz seeds, and the unusual forms it leaves to parseFile.
func streamSeeds(t testing.TB) []string {
	c1, c2 := stCompany(1), stCompany(2)
	rec := `{"company_id": "` + c1 + `", "type": "integrated_api_key", "api_key": "k"}`
	seeds := append(fuzzSeeds(t),
		`   `,
		"\n{\"credentials\": [\n"+rec+"\n]}\n",
		`{"CREDENTIALS": [`+rec+`]}`,
		`{"credentials": [`+rec+`], "credentials": []}`,
		`{"credentials": null}`,
		`{"credentials": [`+rec+`, {"company_id": "`+strings.ToUpper(c1)+`", "type": "integrated_api_key", "api_key": "k2"}]}`,
		`{"credentials": [{"company_id": "`+c1+`", "tenant_id": "t", "type": "integrated_api_key", "api_key": "a"}, {"company_id": "`+c2+`", "tenant_id": "t", "type": "integrated_api_key", "api_key": "b"}, {"company_id": "nope"}]}`,
		`{"credentials": [`+rec+`, `+rec+`, {"company_id": "nope"}]}`,
		`{"credentials": [`+rec+`, `+rec+`] x`,
		`{"credentials": [`+rec+`, {"company_id": "`+c2+`", "type": "oauth2", "refresh_token": "rt", "unknown": 1}]}`,
	)
	// Encrypted documents in the usual order and reordered, with their faults.
	sealer := testSealer(t, testKey(1))
	creds, err := Parse(strings.NewReader(`{"credentials": [` + rec + `, {"company_id": "` + c2 + `", "tenant_id": "t2", "type": "oauth2", "access_token": "at", "refresh_token": "rt"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	enc, err := marshalFile(creds, sealer)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(enc)
	encMember := `"encryption": {` + "\n" + `    "version": 1` + "\n" + `  },`
	body := strings.Replace(doc, encMember, "", 1)
	reordered := strings.Replace(body, "\n}\n", `, "encryption": {"version": 1}}`, 1)
	seeds = append(seeds, doc, reordered,
		strings.Replace(doc, `"version": 1`, `"version": 1, "extra": 2`, 1),
		strings.Replace(doc, `"credentials": [`, `"credentials": null, "credentials": [`, 1),
		strings.Replace(doc, `"credentials": [`, `"credentials": {}, "x": [`, 1),
		strings.Replace(doc, `"credentials": [`, `"credentials": 5, "x": [`, 1),
		strings.Replace(doc, "v1.", "v1.x", 1),
		strings.Replace(doc, `"t2"`, `""`, 1),
		strings.Replace(doc, c2, c1, -1),
		strings.Replace(doc, c2, strings.ToUpper(c2), -1),
		doc+" {}",
		strings.Replace(doc, `"encryption": {`, `"encryption": null, "e": {`, 1),
	)
	return seeds
}

// decodeStream agrees with parseFile: the same documents accepted, as the same format, with
// the same credentials; the same ones refused, and for these documents with the same error.
func TestDecodeStreamMatchesParseFile(t *testing.T) {
	for _, sealer := range []*Sealer{nil, testSealer(t, testKey(1), testKey(2))} {
		for i, doc := range streamSeeds(t) {
			want, wantEnc, wantErr := parseFile([]byte(doc), sealer)
			snap, enc, err := decodeStream(strings.NewReader(doc), sealer, int64(len(doc)))
			if errors.Is(err, errStreamFallback) {
				if wantErr == nil && !strings.Contains(doc, "encryption") && !strings.Contains(doc, `"credentials": [], "credentials"`) {
					t.Errorf("seed %d: an ordinary document left to parseFile:\n%s", i, doc)
				}
				continue
			}
			if (err == nil) != (wantErr == nil) || err != nil && err.Error() != wantErr.Error() {
				t.Errorf("sealer %v, seed %d: error\n%v\nparseFile:\n%v\n%s", sealer != nil, i, err, wantErr, doc)
				continue
			}
			if err != nil {
				continue
			}
			if enc != wantEnc {
				t.Errorf("seed %d: encrypted %v, parseFile %v", i, enc, wantEnc)
			}
			assertSameCredentials(t, snap.list(), want)
			snap.release()
		}
	}
}

// FuzzDecodeStream: what readSnapshot reads (decodeStream, or parseFile for what it leaves)
// is what parseFile reads.
func FuzzDecodeStream(f *testing.F) {
	for _, s := range streamSeeds(f) {
		f.Add([]byte(s))
	}
	sealer := testSealer(f, testKey(1), testKey(2))
	f.Fuzz(func(t *testing.T, data []byte) {
		want, wantEnc, wantErr := parseFile(data, sealer)
		snap, enc, err := decodeStream(bytes.NewReader(data), sealer, int64(len(data)))
		if errors.Is(err, errStreamFallback) {
			return
		}
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("decodeStream: %v; parseFile: %v", err, wantErr)
		}
		if err != nil {
			return
		}
		defer snap.release()
		if enc != wantEnc {
			t.Fatalf("encrypted %v, parseFile %v", enc, wantEnc)
		}
		assertSameCredentials(t, snap.list(), want)
	})
}

// readSnapshot reads what it is given whole, the documents decodeStream leaves to parseFile
// included, and fingerprints the bytes it read.
func TestReadSnapshot(t *testing.T) {
	sealer := testSealer(t, testKey(1))
	dir := t.TempDir()
	for i, doc := range streamSeeds(t) {
		path := filepath.Join(dir, "credentials.json")
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		want, wantEnc, wantErr := parseFile([]byte(doc), sealer)
		res := readSnapshot(path, os.Geteuid(), sealer)
		if res.ioErr != nil {
			t.Fatal(res.ioErr)
		}
		if (res.decodeErr == nil) != (wantErr == nil) {
			t.Errorf("seed %d: %v, parseFile %v", i, res.decodeErr, wantErr)
		}
		fp, err := hashFile(path)
		if err != nil || fp != res.fp {
			t.Errorf("seed %d: fingerprint %+v, hashFile %+v (%v)", i, res.fp, fp, err)
		}
		if res.decodeErr != nil {
			continue
		}
		if res.encrypted != wantEnc {
			t.Errorf("seed %d: encrypted %v, parseFile %v", i, res.encrypted, wantEnc)
		}
		assertSameCredentials(t, res.snap.list(), want)
		res.snap.release()
	}
	if res := readSnapshot(filepath.Join(dir, "missing.json"), os.Geteuid(), nil); res.ioErr != nil || res.decodeErr != nil ||
		res.fp.exists || res.snap.len() != 0 {
		t.Errorf("a missing file: %+v", res)
	}
}

// writeSnapshot writes the plain format byte for byte as Marshal does, and an encrypted
// document that parseFile reads back to the same credentials.
func TestWriteSnapshot(t *testing.T) {
	full := normalizeCredential(stOAuth(3, "erp <&> \u2028"))
	full.LastError, full.Version = "invalid_grant \x00 ü", 9
	for _, tc := range []struct {
		name  string
		creds []Credential
	}{
		{"empty", nil},
		{"one", []Credential{normalizeCredential(stKey(1, IntegratedAPIKey))}},
		{"several, unordered", []Credential{full, normalizeCredential(stKey(2, StandaloneAPIKey)), normalizeCredential(stOAuth(1, ""))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap, err := packCredentials(tc.creds)
			if err != nil {
				t.Fatal(err)
			}
			defer snap.release()
			var plain bytes.Buffer
			if err := writeSnapshot(&plain, snap, nil); err != nil {
				t.Fatal(err)
			}
			want, err := Marshal(tc.creds)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(plain.Bytes(), want) {
				t.Errorf("plain:\n%s\nMarshal:\n%s", plain.Bytes(), want)
			}
			sealer := testSealer(t, testKey(1))
			var enc bytes.Buffer
			if err := writeSnapshot(&enc, snap, sealer); err != nil {
				t.Fatal(err)
			}
			back, encrypted, err := parseFile(enc.Bytes(), sealer)
			if err != nil || !encrypted {
				t.Fatalf("parseFile of the encrypted document: %v, encrypted %v\n%s", err, encrypted, enc.Bytes())
			}
			assertSameCredentials(t, back, tc.creds)
			ref, err := marshalFile(tc.creds, sealer)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := sealedShape(enc.String()), sealedShape(string(ref)); got != want {
				t.Errorf("encrypted:\n%s\nmarshalFile:\n%s", got, want)
			}
		})
	}
}

// sealedShape replaces the data of every sealed value (random nonces) with "…".
func sealedShape(doc string) string {
	var out strings.Builder
	for {
		i := strings.Index(doc, `"v1.`)
		if i < 0 {
			out.WriteString(doc)
			return out.String()
		}
		j := strings.IndexByte(doc[i+1:], '"')
		out.WriteString(doc[:i])
		out.WriteString(`"v1.…"`)
		doc = doc[i+1+j+1:]
	}
}

// A read error is told apart from a document that does not parse.
func TestReadErrRecorder(t *testing.T) {
	boom := errors.New("boom")
	r := &readErrRecorder{r: io.MultiReader(strings.NewReader(`{"credentials": [`), iotestErrReader{boom})}
	_, _, err := decodeStream(r, nil, 0)
	if err == nil || !errors.Is(r.err, boom) {
		t.Fatalf("decodeStream: %v, recorded %v", err, r.err)
	}
}

type iotestErrReader struct{ err error }

func (r iotestErrReader) Read([]byte) (int, error) { return 0, r.err }
