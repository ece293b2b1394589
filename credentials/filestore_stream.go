package credentials

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"unsafe"
)

// The file store reads and writes its file as a stream, so that a file of 100,000
// credentials is never in memory whole, nor as a slice of records or credentials: what a
// read keeps is one packed record per credential (see filestore_packed.go), and a write
// encodes one record at a time straight into the temporary file. parseFile and marshalFile (a
// test helper)
// remain the reference the streaming forms are tested against, and parseFile reads the
// unusual documents the stream leaves to it (errStreamFallback).

// errStreamFallback: a document the streaming decoder leaves to parseFile: one in an
// unusual form (a member repeated, "encryption" after "credentials", sealed values in a file
// whose "encryption" member has not been seen), or an encrypted one it refuses, so that the
// reason is worded exactly as parseFile words it.
var errStreamFallback = errors.New("credentials: parse: unusual document, read whole")

// decodeStream decodes a credentials file in either format from r, with parseFile's
// semantics: what one accepts the other accepts, with the same credentials and format, and it
// refuses the same documents. A plain document with one fault is refused with parseFile's
// error (with several, which one is reported may differ); an encrypted one, and the unusual
// forms, it leaves to parseFile (errStreamFallback).
//
// sizeHint is the document's size if known (its packed records are smaller), else 0.
func decodeStream(r io.Reader, sealer *Sealer, sizeHint int64) (snap *packedSnapshot, encrypted bool, err error) {
	b, err := newSnapshotBuilder(int(min(max(sizeHint, 0), 1<<30)))
	if err != nil {
		return nil, false, err
	}
	d := streamDecoder{dec: json.NewDecoder(r), sealer: sealer, b: b}
	d.dec.DisallowUnknownFields()
	err = d.document()
	if err == nil {
		var byCompany []uint32
		var byTenant []int32
		if byCompany, byTenant, err = sortPacked(b, d.rawIDs); err == nil {
			b.offs = byCompany
			if snap, err = b.finish(byTenant); err == nil {
				return snap, d.encrypted, nil
			}
			return nil, false, err
		}
		if !d.encrypted {
			err = parseError(err)
		}
	} else if !d.encrypted && !errors.Is(err, errStreamFallback) && len(b.offs) > 0 {
		// Parse validates as it streams, so it reports a duplicate before any later fault.
		if _, _, derr := sortPacked(b, d.rawIDs); derr != nil {
			err = parseError(derr)
		}
	}
	b.abandon()
	if d.encrypted {
		err = errStreamFallback
	}
	return nil, false, err
}

// streamDecoder holds decodeStream's state.
type streamDecoder struct {
	dec    *json.Decoder
	sealer *Sealer

	encrypted bool            // an "encryption" member came first
	enc       *FileEncryption // its value
	credsSeen bool            // the "credentials" member was read
	credsNull bool            // … and was null

	b      *snapshotBuilder // the records, in file order
	rawIDs map[int]string   // company ids as written, of the records where that is not canonical
}

func parseError(err error) error { return fmt.Errorf("credentials: parse: %w", err) }

func (d *streamDecoder) document() error {
	tok, err := d.dec.Token()
	if err == io.EOF {
		return errors.New("credentials: parse: the file is empty")
	}
	if err != nil {
		return parseError(err)
	}
	if tok != json.Delim('{') {
		return parseError(errors.New("the document must be a JSON object"))
	}
	for d.dec.More() {
		tok, err := d.dec.Token()
		if err != nil {
			return parseError(err)
		}
		key, _ := tok.(string)
		switch {
		case strings.EqualFold(key, "encryption"):
			if d.encrypted || d.credsSeen {
				return errStreamFallback
			}
			d.encrypted = true
			if err := d.dec.Decode(&d.enc); err != nil {
				return parseError(err)
			}
		case strings.EqualFold(key, "credentials"):
			if d.credsSeen {
				return errStreamFallback
			}
			d.credsSeen = true
			if err := d.credentials(); err != nil {
				return err
			}
		default:
			return parseError(fmt.Errorf("json: unknown field %q", key))
		}
	}
	if err := expectDelim(d.dec, '}', "the document must be a JSON object"); err != nil {
		return parseError(err)
	}
	if _, err := d.dec.Token(); err != io.EOF {
		return parseError(errors.New("unexpected data after the document"))
	}
	switch {
	case d.encrypted && !d.canOpen():
		return errStreamFallback
	case !d.credsSeen || d.credsNull:
		return parseError(errors.New(`missing "credentials" array`))
	}
	return nil
}

// canOpen reports whether the sealed values of an encrypted document can be opened: the
// "encryption" member is one this build reads, and there is a sealer.
func (d *streamDecoder) canOpen() bool {
	return d.sealer != nil && d.enc != nil && d.enc.Version == FileEncryptionVersion
}

// credentials reads the "credentials" member's value, record by record.
func (d *streamDecoder) credentials() error {
	tok, err := d.dec.Token()
	if err != nil {
		return parseError(err)
	}
	switch {
	case tok == nil:
		d.credsNull = true
		return nil
	case tok != json.Delim('['):
		return parseError(errors.New(`"credentials" must be an array`))
	case d.encrypted && !d.canOpen():
		return errStreamFallback
	}
	for i := 0; d.dec.More(); i++ {
		var rec Record
		if err := d.dec.Decode(&rec); err != nil {
			return parseError(fmt.Errorf("record %d: %w", i, err))
		}
		for _, fld := range secretFields(&rec) {
			switch {
			case !d.encrypted && IsSealed(*fld.v):
				return errStreamFallback // parseFile decides: encrypted after all, or refused
			case d.encrypted && *fld.v != "":
				plain, err := d.sealer.Open(rec.CompanyID, fld.name, *fld.v)
				if err != nil {
					return &RecordError{Index: i, CompanyID: rec.CompanyID, Err: fmt.Errorf("%s: %w", fld.name, err)}
				}
				*fld.v = string(plain)
			}
		}
		if err := d.add(i, rec); err != nil {
			return parseError(err)
		}
	}
	if err := expectDelim(d.dec, ']', `"credentials" must be an array`); err != nil {
		return parseError(err)
	}
	return nil
}

// add validates record i as recordValidator.check does (but for duplicates, which sortPacked
// finds) and packs it.
func (d *streamDecoder) add(i int, rec Record) error {
	c := rec.Credential()
	c.CompanyID = CanonicalCompanyID(c.CompanyID)
	if err := c.Validate(); err != nil {
		return &RecordError{Index: i, CompanyID: rec.CompanyID, Err: err}
	}
	if err := d.b.add(normalizeCredential(c)); err != nil {
		return &RecordError{Index: i, CompanyID: rec.CompanyID, Err: err}
	}
	if rec.CompanyID != c.CompanyID {
		if d.rawIDs == nil {
			d.rawIDs = make(map[int]string)
		}
		d.rawIDs[i] = rec.CompanyID
	}
	return nil
}

// packer packs credentials in one scratch buffer.
type packer struct{ buf []byte }

// view packs c and returns the record as a view of the scratch buffer, valid until the next
// call.
func (p *packer) view(c Credential) (string, error) {
	var err error
	p.buf, err = appendPacked(p.buf[:0], c)
	if err != nil {
		return "", err
	}
	return unsafe.String(unsafe.SliceData(p.buf), len(p.buf)), nil
}

// sortPacked sorts the records of b, added in file order, by company id and indexes their
// tenants, refusing a company or tenant id given twice as recordValidator does: the error
// names the first record, in file order, that repeats an earlier one (a company before a
// tenant). rawIDs holds the company ids as written where they differ from the canonical ones.
// It returns the records' offsets sorted by company id, and the tenant index.
func sortPacked(b *snapshotBuilder, rawIDs map[int]string) (sorted []uint32, byTenant []int32, err error) {
	n := len(b.offs)
	byCompany := make([]int32, n)
	var withTenant []int32
	for i := range n {
		byCompany[i] = int32(i)
		if packedTenantID(b.view(i)) != "" {
			withTenant = append(withTenant, int32(i))
		}
	}
	fileOrder := func(i int32) string { return b.view(int(i)) }
	keyOrder := func(key func(string) string) func(a, b int32) int {
		return func(a, b int32) int {
			if c := strings.Compare(key(fileOrder(a)), key(fileOrder(b))); c != 0 {
				return c
			}
			return int(a - b)
		}
	}
	// firstRepeat returns the earliest record (in file order) whose key an earlier one has,
	// and that earlier one; idx is sorted by key, then file order.
	firstRepeat := func(idx []int32, key func(string) string) (rec, first int) {
		rec, first = -1, -1
		for k := 1; k < len(idx); k++ {
			if key(fileOrder(idx[k])) != key(fileOrder(idx[k-1])) {
				continue
			}
			g := k - 1
			for g > 0 && key(fileOrder(idx[g-1])) == key(fileOrder(idx[k])) {
				g--
			}
			if rec < 0 || int(idx[k]) < rec {
				rec, first = int(idx[k]), int(idx[g])
			}
		}
		return rec, first
	}
	slices.SortFunc(byCompany, keyOrder(packedKey))
	slices.SortFunc(withTenant, keyOrder(packedTenantID))
	ci, cj := firstRepeat(byCompany, packedKey)
	ti, tj := firstRepeat(withTenant, packedTenantID)
	if ci >= 0 || ti >= 0 {
		i, msg := ci, fmt.Errorf("company_id duplicates record %d", cj)
		if ci < 0 || ti >= 0 && ti < ci {
			i, msg = ti, fmt.Errorf("tenant_id duplicates record %d", tj)
		}
		id, ok := rawIDs[i]
		if !ok {
			id = companyIDOf(packedKey(fileOrder(int32(i))))
		}
		return nil, nil, &RecordError{Index: i, CompanyID: id, Err: msg}
	}
	sorted = make([]uint32, n)
	pos := make([]int32, n) // file order -> sorted position
	for k, i := range byCompany {
		sorted[k] = b.offs[i]
		pos[i] = int32(k)
	}
	for k, i := range withTenant {
		withTenant[k] = pos[i]
	}
	if withTenant == nil {
		withTenant = []int32{}
	}
	return sorted, slices.Clip(withTenant), nil
}

// packCredentials packs credentials that parseFile returned (valid, no company or tenant
// twice) into a snapshot.
func packCredentials(creds []Credential) (*packedSnapshot, error) {
	creds = slices.Clone(creds)
	size := 0
	for i, c := range creds {
		creds[i] = normalizeCredential(c)
		size += packedSize(creds[i])
	}
	slices.SortFunc(creds, func(a, b Credential) int { return strings.Compare(a.CompanyID, b.CompanyID) })
	b, err := newSnapshotBuilder(size)
	if err != nil {
		return nil, err
	}
	for _, c := range creds {
		if err := b.add(c); err != nil {
			b.abandon()
			return nil, err
		}
	}
	return b.finish(nil)
}

// readResult is what readSnapshot found.
type readResult struct {
	snap      *packedSnapshot // nil unless decoded
	fp        fileFingerprint // the file read (exists false: there is none)
	encrypted bool
	ioErr     error // the file could not be read: fp is not valid
	decodeErr error // the file was read (fp is valid) and refused
}

// readSnapshot reads the file at path (following links) once, fingerprinting what it read,
// and decodes it: checkFileMode first, then either format (decodeStream, or parseFile for the
// documents it leaves). A missing file is an empty store.
func readSnapshot(path string, euid int, sealer *Sealer) readResult {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return readResult{snap: newEmptySnapshot()}
	}
	if err != nil {
		return readResult{ioErr: err}
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return readResult{ioErr: err}
	}
	res := readResult{fp: fingerprintOf(fi)}
	h := sha256.New()
	src := &readErrRecorder{r: f}
	if err := checkFileMode(path, res.fp.mode, res.fp.uid, euid, kubeletProjected(path)); err != nil {
		res.decodeErr = err
	} else {
		br := bufio.NewReaderSize(io.TeeReader(src, h), 64<<10)
		res.snap, res.encrypted, res.decodeErr = decodeStream(br, sealer, res.fp.size)
		if errors.Is(res.decodeErr, errStreamFallback) {
			return readWhole(f, res, sealer)
		}
	}
	// Hash what the decoder did not read (all of it, when refused before).
	if _, err := io.Copy(h, src); err != nil && src.err == nil {
		src.err = err
	}
	if src.err != nil {
		if res.snap != nil {
			res.snap.release()
		}
		return readResult{ioErr: src.err}
	}
	h.Sum(res.fp.sum[:0])
	return res
}

// readWhole reads f again from the start, in one buffer, and decodes it with parseFile.
func readWhole(f *os.File, res readResult, sealer *Sealer) readResult {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return readResult{ioErr: err}
	}
	buf := bytes.NewBuffer(make([]byte, 0, int(min(max(res.fp.size, 0), 1<<30))+512))
	if _, err := buf.ReadFrom(f); err != nil {
		return readResult{ioErr: err}
	}
	res.fp.sum = sha256.Sum256(buf.Bytes())
	creds, encrypted, err := parseFile(buf.Bytes(), sealer)
	if err != nil {
		return readResult{fp: res.fp, decodeErr: err}
	}
	res.encrypted = encrypted
	res.snap, res.decodeErr = packCredentials(creds)
	return res
}

// hashFile fingerprints the file at path (following links), hashing its content as a stream.
// A missing file gives exists false.
func hashFile(path string) (fileFingerprint, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return fileFingerprint{}, nil
	}
	if err != nil {
		return fileFingerprint{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fileFingerprint{}, err
	}
	fp := fingerprintOf(fi)
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 64<<10)); err != nil {
		return fileFingerprint{}, err
	}
	h.Sum(fp.sum[:0])
	return fp, nil
}

// readErrRecorder remembers the first error, other than io.EOF, of the reader it wraps, so
// that a failed read is told apart from a document that does not parse.
type readErrRecorder struct {
	r   io.Reader
	err error
}

func (r *readErrRecorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// writeSnapshot writes snap in the file store's format, record by record: the plain format
// (byte for byte as Marshal writes it) without a sealer, the encrypted one (as marshalFile)
// with it, every secret sealed afresh with its newest key.
func writeSnapshot(w io.Writer, snap *packedSnapshot, sealer *Sealer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	if sealer != nil {
		fmt.Fprintf(bw, "{\n  \"encryption\": {\n    \"version\": %d\n  },\n", FileEncryptionVersion)
	} else {
		bw.WriteString("{\n")
	}
	if snap.len() == 0 {
		bw.WriteString("  \"credentials\": []\n}\n")
		return bw.Flush()
	}
	bw.WriteString("  \"credentials\": [\n")
	var (
		buf bytes.Buffer
		out bytes.Buffer
	)
	enc := json.NewEncoder(&buf)
	for i := range snap.len() {
		r := RecordOf(snap.credential(i))
		if sealer != nil {
			if err := sealRecord(&r, sealer); err != nil {
				return err
			}
		}
		buf.Reset()
		if err := enc.Encode(r); err != nil {
			return fmt.Errorf("credentials: marshal: %w", err)
		}
		out.Reset()
		if err := json.Indent(&out, bytes.TrimSuffix(buf.Bytes(), []byte("\n")), "    ", "  "); err != nil {
			return fmt.Errorf("credentials: marshal: %w", err)
		}
		if i > 0 {
			bw.WriteString(",\n")
		}
		bw.WriteString("    ")
		bw.Write(out.Bytes())
	}
	bw.WriteString("\n  ]\n}\n")
	return bw.Flush()
}
