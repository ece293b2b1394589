package credentials

import (
	"errors"
	"fmt"
)

// Sentinel errors callers branch on with errors.Is.
var (
	// ErrNotFound: the store holds no credential for that company or tenant.
	ErrNotFound = errors.New("credentials: not found")
	// ErrConflict: a compare-and-swap update lost to another writer.
	ErrConflict = errors.New("credentials: version conflict")
	// ErrCredentialExpired: the company's API key is past its expires_at.
	ErrCredentialExpired = errors.New("credentials: credential expired")
	// ErrReauthorizationRequired: the refresh token was rejected; a person must reconnect.
	ErrReauthorizationRequired = errors.New("credentials: reauthorization required")
	// ErrStoreUnavailable: the store could not be read.
	ErrStoreUnavailable = errors.New("credentials: store unavailable")
	// ErrTokenEndpoint: a refresh failed transiently and no unexpired token is left.
	ErrTokenEndpoint = errors.New("credentials: token endpoint error")
	// ErrRefreshInProgress: another process holds this credential's refresh lease and its
	// outcome is unknown; the token endpoint must not be called for it meanwhile.
	ErrRefreshInProgress = errors.New("credentials: refresh in progress elsewhere")
)

// FieldError names the field of a credential that is invalid.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return fmt.Sprintf("credentials: %s %s", e.Field, e.Reason) }

// RecordError names the record (by index in its file) that failed validation.
type RecordError struct {
	Index     int
	CompanyID string
	Err       error
}

func (e *RecordError) Error() string {
	if e.CompanyID != "" {
		return fmt.Sprintf("credentials: record %d (company_id %q): %v", e.Index, e.CompanyID, e.Err)
	}
	return fmt.Sprintf("credentials: record %d: %v", e.Index, e.Err)
}

func (e *RecordError) Unwrap() error { return e.Err }
