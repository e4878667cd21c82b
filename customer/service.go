package customer

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/page"
)

// Service is the customer feature's use cases. It is safe for concurrent use.
type Service struct {
	repo   *Repo
	region string
	erase  erasure      // what Erase needs; set by WithEraser (erase.go)
	log    *slog.Logger // set by WithLogger; slog.Default() otherwise
}

// NewService returns a Service storing through repo. defaultRegion (a
// two-letter region code such as "US" or "KE", any case) is how phones
// written without a +country code are read. An unknown region is not an
// error here, but every such phone is then rejected as invalid; check
// configuration with ValidRegion.
func NewService(repo *Repo, defaultRegion string) *Service {
	return &Service{repo: repo, region: strings.ToUpper(strings.TrimSpace(defaultRegion)), log: slog.Default()}
}

// WithLogger sets the logger of what the service does on its own (see
// Import) and returns s.
func (s *Service) WithLogger(log *slog.Logger) *Service {
	s.log = log
	return s
}

// Get returns the customer with id, or an error matching ErrNotFound.
func (s *Service) Get(ctx context.Context, id int64) (Customer, error) {
	return s.repo.Get(ctx, id)
}

// OptOut records that customer id must never be messaged on ch and returns
// the customer as it now is. It is idempotent: opting out of a channel the
// customer already opted out of succeeds and changes nothing. An invalid ch
// is a VALIDATION_ERROR naming the channel field (checked before the
// customer is looked up); an unknown customer is an error matching
// ErrNotFound. The campaign and messaging features enforce the opt-out by
// reading customer_opt_outs; this feature only records it.
func (s *Service) OptOut(ctx context.Context, id int64, ch channel.Channel) (Customer, error) {
	if _, err := channel.Parse("channel", string(ch)); err != nil {
		return Customer{}, err
	}
	if err := s.repo.OptOut(ctx, id, ch); err != nil {
		return Customer{}, err
	}
	return s.repo.Get(ctx, id)
}

// OptIn removes customer id's opt-out of ch, so the customer may be messaged
// on it again, and returns the customer as it now is. Opting in to a channel
// the customer has not opted out of succeeds and changes nothing. Errors are
// as for OptOut.
func (s *Service) OptIn(ctx context.Context, id int64, ch channel.Channel) (Customer, error) {
	if _, err := channel.Parse("channel", string(ch)); err != nil {
		return Customer{}, err
	}
	if err := s.repo.OptIn(ctx, id, ch); err != nil {
		return Customer{}, err
	}
	// An unknown customer had nothing to delete; Get reports it.
	return s.repo.Get(ctx, id)
}

// List returns one page of the customers f selects, newest first, with its
// pagination block. Each customer carries its opt-outs. A cursor request
// (req.AfterID set) continues after the cursor's last id, so a walk never
// repeats or skips a customer that existed when it began. total_count counts
// every customer f selects.
//
// A filter value no customer could have (see Filter) is a VALIDATION_ERROR
// naming it.
func (s *Service) List(ctx context.Context, f Filter, req page.Request) (page.List[Customer], error) {
	f, err := f.validate()
	if err != nil {
		return page.List[Customer]{}, err
	}
	rows, err := s.repo.List(ctx, f, req.Limit(), req.Offset(), req.AfterID)
	if err != nil {
		return page.List[Customer]{}, err
	}
	total, err := s.repo.Count(ctx, f)
	if err != nil {
		return page.List[Customer]{}, err
	}
	return page.New(rows, req, total, func(c Customer) int64 { return c.ID }), nil
}

// Create validates in, normalises its phone to E.164 and stores it. Invalid
// input is a VALIDATION_ERROR naming the field; a phone another customer has
// is ErrPhoneTaken.
func (s *Service) Create(ctx context.Context, in Input) (Customer, error) {
	clean, err := in.validate(s.region)
	if err != nil {
		return Customer{}, err
	}
	return s.repo.Create(ctx, clean)
}

// NormalizePhone reads raw as customers' phones are read (E.164, numbers
// without a +country code in the default region), for other features that
// take a phone, such as a campaign's test send. The error's text says what
// is wrong, for the person who typed it.
func (s *Service) NormalizePhone(raw string) (string, error) {
	phone, ferr := normalizePhone(raw, s.region)
	if ferr != nil {
		return "", errors.New(ferr.Message)
	}
	return phone, nil
}
