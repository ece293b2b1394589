package proxy

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
)

// TenantResolver maps an external system's tenant id to the Pleo company connected to it.
type TenantResolver interface {
	CompanyForTenant(ctx context.Context, tenantID string) (string, error)
}

// Selector chooses the company a request is for. First match wins — the company header, the
// company_id query parameter, the tenant header, the default — but every selector present must
// name the same company, so a credential is never used with another company's id.
type Selector struct {
	// CompanyHeader and TenantHeader are canonical header names.
	CompanyHeader string
	TenantHeader  string
	// Default is the company for requests that name none ("" for none).
	Default string
	// Tenants resolves the tenant header.
	Tenants TenantResolver
}

// maxTenantLen bounds a tenant id taken from a header.
const maxTenantLen = 256

// Select returns the canonical company id, or a *Problem.
func (s *Selector) Select(ctx context.Context, r *http.Request) (string, error) {
	fromHeader, err := companyFromValues(r.Header.Values(s.CompanyHeader), "header "+s.CompanyHeader)
	if err != nil {
		return "", err
	}
	fromQuery, err := companyFromQuery(r.URL.RawQuery)
	if err != nil {
		return "", err
	}
	if fromHeader != "" && fromQuery != "" && fromHeader != fromQuery {
		return "", &Problem{Code: CodeCompanyMismatch, Detail: "header " + s.CompanyHeader + " and query parameter company_id name different companies"}
	}
	chosen := fromHeader
	if chosen == "" {
		chosen = fromQuery
	}
	tenants := r.Header.Values(s.TenantHeader)
	if len(tenants) > 0 {
		tenant := tenants[0]
		for _, t := range tenants[1:] {
			if t != tenant {
				return "", &Problem{Code: CodeCompanyMismatch, Detail: "header " + s.TenantHeader + " is repeated with different values"}
			}
		}
		if tenant == "" || len(tenant) > maxTenantLen || !printable(tenant) {
			return "", &Problem{Code: CodeCompanyInvalid, Detail: "header " + s.TenantHeader + " is empty, too long or has control characters"}
		}
		company, err := s.Tenants.CompanyForTenant(ctx, tenant)
		if err != nil {
			if errors.Is(err, credentials.ErrNotFound) {
				return "", &Problem{Code: CodeCompanyUnknown, Detail: "no credential has this tenant id", CompanyID: chosen}
			}
			return "", err
		}
		if chosen != "" && company != chosen {
			return "", &Problem{Code: CodeCompanyMismatch, Detail: "header " + s.TenantHeader + " belongs to another company than the one selected", CompanyID: chosen}
		}
		chosen = company
	}
	if chosen == "" {
		chosen = s.Default
	}
	if chosen == "" {
		return "", &Problem{Code: CodeCompanyMissing, Detail: "name the company with header " + s.CompanyHeader + ", query parameter company_id or header " + s.TenantHeader}
	}
	return chosen, nil
}

// companyFromValues validates every value of one selector; repeated values must agree.
func companyFromValues(values []string, what string) (string, error) {
	if len(values) == 0 {
		return "", nil
	}
	first := ""
	for i, v := range values {
		if !credentials.ValidCompanyID(v) {
			return "", &Problem{Code: CodeCompanyInvalid, Detail: what + " is not a UUID"}
		}
		v = credentials.CanonicalCompanyID(v)
		if i == 0 {
			first = v
		} else if v != first {
			return "", &Problem{Code: CodeCompanyMismatch, Detail: what + " is repeated with different companies"}
		}
	}
	return first, nil
}

// companyParam is the query parameter that names a company in Pleo's API.
const companyParam = "company_id"

// companyFromQuery reads company_id from a raw query the way the upstream will: keys are
// percent-decoded ("company%5Fid" and "%63ompany_id" are company_id) and compared without
// regard to case; repeated values must agree. A query that cannot be read unambiguously and
// might name a company is refused with company_invalid: a ';' (some servers split on it) in a
// query where a key decodes to company_id, or a malformed escape in a key that reads as
// "company" or in a company_id value. A query that cannot name a company costs one scan.
func companyFromQuery(raw string) (string, error) {
	if raw == "" || (strings.IndexByte(raw, '%') < 0 && !containsFold(raw, "company")) {
		return "", nil
	}
	semicolon := strings.IndexByte(raw, ';') >= 0
	var values []string
	for seg := range strings.FieldsFuncSeq(raw, func(c rune) bool { return c == '&' || c == ';' }) {
		rawKey, rawValue, _ := strings.Cut(seg, "=")
		key, err := url.QueryUnescape(rawKey)
		if err != nil {
			if containsFold(lenientUnescape(rawKey), "company") {
				return "", &Problem{Code: CodeCompanyInvalid, Detail: "the query string has a malformed escape in a key that may name the company"}
			}
			continue
		}
		if !strings.EqualFold(key, companyParam) {
			continue
		}
		if semicolon {
			return "", &Problem{Code: CodeCompanyInvalid, Detail: "the query string names company_id and has a ';', which servers read differently"}
		}
		value, err := url.QueryUnescape(rawValue)
		if err != nil {
			return "", &Problem{Code: CodeCompanyInvalid, Detail: "query parameter company_id has a malformed escape"}
		}
		values = append(values, value)
	}
	return companyFromValues(values, "query parameter company_id")
}

// lenientUnescape decodes the valid %XX escapes of s and leaves malformed ones as they are, as
// a lenient server would.
func lenientUnescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && ishex(s[i+1]) && ishex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// containsFold reports whether s contains the lower-case ASCII word sub, ignoring case.
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		j := 0
		for ; j < len(sub); j++ {
			c := s[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != sub[j] {
				break
			}
		}
		if j == len(sub) {
			return true
		}
	}
	return false
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}
