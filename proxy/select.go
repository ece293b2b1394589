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
	fromQuery := ""
	if strings.Contains(r.URL.RawQuery, "company_id") {
		q, perr := url.ParseQuery(r.URL.RawQuery)
		if perr != nil {
			return "", &Problem{Code: CodeCompanyInvalid, Detail: "the query string is malformed"}
		}
		if fromQuery, err = companyFromValues(q["company_id"], "query parameter company_id"); err != nil {
			return "", err
		}
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

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}
