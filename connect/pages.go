package connect

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"html/template"
	"net/http"
	"strconv"
	"unicode/utf8"
)

// pageStyle is the pages' only style; the Content-Security-Policy allows it by hash and
// nothing else (no script, no image, no frame, no form).
const pageStyle = `body{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#1a1a1a}` +
	`h1{font-size:1.4rem}dt{font-weight:600}dd{margin:0 0 .6rem 0;word-break:break-all}` +
	`.ok h1{color:#166534}.err h1{color:#991b1b}`

var contentSecurityPolicy = func() string {
	sum := sha256.Sum256([]byte(pageStyle))
	return "default-src 'none'; style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) +
		"'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}()

// page is what one result or error page shows. Every field is escaped by html/template.
type page struct {
	OK      bool
	Title   string
	Message string
	Details []detail
	Style   template.CSS
}

type detail struct{ Name, Value string }

var pageTemplate = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer"><meta name="robots" content="noindex">
<title>{{.Title}}</title><style>{{.Style}}</style></head>
<body class="{{if .OK}}ok{{else}}err{{end}}"><main>
<h1>{{.Title}}</h1>
<p>{{.Message}}</p>
{{- if .Details}}
<dl>{{range .Details}}<dt>{{.Name}}</dt><dd>{{.Value}}</dd>{{end}}</dl>
{{- end}}
</main></body></html>
`))

// maxEcho bounds any value echoed from a request (an error description, a tenant id).
const maxEcho = 300

// echo makes an untrusted value safe to show: valid UTF-8, at most maxEcho bytes. Escaping
// is html/template's job.
func echo(s string) string {
	if len(s) > maxEcho {
		s = s[:maxEcho]
		for len(s) > 0 && !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "…"
	}
	return string(bytes.ToValidUTF8([]byte(s), []byte("\uFFFD")))
}

// securityHeaders are set on every answer of the connect listener.
func securityHeaders(h http.Header) {
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", contentSecurityPolicy)
}

// writePage renders p with status.
func writePage(w http.ResponseWriter, status int, p page) {
	p.Style = template.CSS(pageStyle)
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, p); err != nil {
		// The template is fixed and its data plain strings: this does not happen.
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	securityHeaders(h)
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
