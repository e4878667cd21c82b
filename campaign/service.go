package campaign

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/page"
	"github.com/campaignd/dispatch/platform/sms"
)

// Service is the campaign use cases: validation, storage and previews. Its
// errors are errs.Error values (VALIDATION_ERROR naming the field,
// CAMPAIGN_NOT_FOUND, the customer feature's CUSTOMER_NOT_FOUND, UNAVAILABLE)
// or wrapped internal errors. It is safe for concurrent use.
type Service struct {
	repo      *Repo
	tpl       Templater
	customers CustomerFinder
	now       func() time.Time

	dispatcher Dispatcher   // set by WithDispatch; nil disables Send
	estimator  Estimator    // set by WithEstimates; nil disables Estimate
	testSends  testSends    // set by WithTestSend; nil sender disables TestSend
	log        *slog.Logger // for events no request returns, such as a deferred queue push
}

// NewService returns a Service. now is the clock that decides whether a
// scheduled_at lies in the future; nil means time.Now. Tests pass a fixed one.
func NewService(repo *Repo, tpl Templater, customers CustomerFinder, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{repo: repo, tpl: tpl, customers: customers, now: now, log: slog.New(slog.DiscardHandler)}
}

// Create validates in and stores the campaign: status scheduled when
// scheduled_at is in the future, draft when it is absent. The name is stored
// without surrounding whitespace; the template exactly as given. customer_ids
// that name no customer are UNKNOWN_CUSTOMERS, as at a send, and nothing is
// stored.
func (s *Service) Create(ctx context.Context, in CreateInput) (Campaign, error) {
	c, err := validateCreate(in, s.now(), s.tpl.Check)
	if err != nil {
		return Campaign{}, err
	}
	if err := s.checkAudience(ctx, c.Audience); err != nil {
		return Campaign{}, err
	}
	return s.repo.Create(ctx, c)
}

// checkAudience makes the send's check of the customer ids of an audience
// stored with a campaign, so that a scheduled campaign is refused at once
// rather than failing when it comes due. Without a dispatcher no campaign
// can be sent, and there is nothing to check with.
func (s *Service) checkAudience(ctx context.Context, a *Audience) error {
	if a == nil || len(a.CustomerIDs) == 0 || s.dispatcher == nil {
		return nil
	}
	return s.dispatcher.CheckCustomers(ctx, a.CustomerIDs)
}

// Get returns campaign id with its message counts, when its send window
// opens next (while closed) and its progress (rate and ETA), or ErrNotFound.
func (s *Service) Get(ctx context.Context, id int64) (Detail, error) {
	c, st, seconds, dbNow, err := s.repo.Detail(ctx, id)
	if err != nil {
		return Detail{}, err
	}
	now := s.now()
	d := Detail{Campaign: c, Stats: st, NextWindowOpensAt: nextWindowOpens(c, now)}
	// The rate is measured on the database's clock, which stamped the
	// finishes; the ETA is on the service's.
	d.Progress = progress(c, st, rate(seconds, dbNow, c.StartedAt), d.NextWindowOpensAt != nil, now)
	return d, nil
}

// List returns one page of the campaigns matching f, newest first. req comes
// from page.Parse with f's channel and status as its filters, in that order,
// so that a cursor only continues the list it was issued for. Data is never
// nil, so an empty page is JSON [].
func (s *Service) List(ctx context.Context, f Filter, req page.Request) (page.List[Summary], error) {
	q := ListQuery{Filter: f, AfterID: req.AfterID, Offset: int64(req.Offset()), Limit: req.Limit()}
	items, total, err := s.repo.List(ctx, q)
	if err != nil {
		return page.List[Summary]{}, err
	}
	return page.New(items, req, total, func(c Summary) int64 { return c.ID }), nil
}

// Preview renders the campaign's template, or in's override, for one
// customer, exactly as delivery would. The request is validated first
// (customer_id, override_template), then the campaign (ErrNotFound) and the
// customer (the finder's CUSTOMER_NOT_FOUND) are looked up. The override is
// only rendered, never stored.
func (s *Service) Preview(ctx context.Context, id int64, in PreviewInput) (Preview, error) {
	customerID, override, hasOverride, err := validatePreview(in, s.tpl.Check)
	if err != nil {
		return Preview{}, err
	}
	c, err := s.repo.Get(ctx, id)
	if err != nil {
		return Preview{}, err
	}
	contact, err := s.customers.Contact(ctx, customerID)
	if err != nil {
		return Preview{}, fmt.Errorf("preview campaign %d: customer %d: %w", id, customerID, err)
	}
	tmpl := c.BaseTemplate
	if hasOverride {
		tmpl = override
	}
	// Both templates passed Check (the base one when it was stored), and
	// Render fails exactly when Check does, so an error here is a bug or a
	// change of template rules, reported as an internal error.
	msg, warnings, err := s.tpl.Render(string(c.Channel), tmpl, contact.Fields)
	if err != nil {
		return Preview{}, fmt.Errorf("preview campaign %d: render: %w", id, err)
	}
	if warnings == nil {
		warnings = []string{}
	}
	p := Preview{RenderedMessage: msg, UsedTemplate: tmpl, Customer: contact, Warnings: warnings}
	if c.Channel == channel.SMS {
		info := sms.Analyze(msg)
		p.SMS = &info
	}
	return p, nil
}
