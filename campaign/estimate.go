package campaign

import (
	"context"
	"fmt"

	"github.com/campaignd/dispatch/platform/channel"
)

// Estimator sizes and prices a send without creating anything; the
// messaging feature implements it (through an adapter in app), and its
// answer is the response body as it is.
type Estimator interface {
	// Estimate renders tmpl for every customer of a who has not opted out
	// of channel, as delivery would, and counts recipients, segments and
	// cost; duplicatesRemoved is what the caller removed from a's ids
	// before, reported with them. The ids of a are distinct. Unknown ids
	// give an UNKNOWN_CUSTOMERS error; an audience matching nobody is an
	// estimate of 0.
	Estimate(ctx context.Context, ch channel.Channel, tmpl string, a Audience, duplicatesRemoved int) (any, error)
}

// WithEstimates enables Estimate.
func (s *Service) WithEstimates(e Estimator) *Service {
	s.estimator = e
	return s
}

// Estimate answers what sending campaign id with in (the send's body:
// customer_ids, audience, or neither for the stored audience) would
// create and cost, whatever the campaign's status, creating nothing.
// Errors are the send's: CAMPAIGN_NOT_FOUND, VALIDATION_ERROR for the
// body, UNKNOWN_CUSTOMERS; an empty audience is not one (recipients 0).
func (s *Service) Estimate(ctx context.Context, id int64, in SendInput) (any, error) {
	c, err := s.repo.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	a, dups, err := resolveAudience(in, c.Audience)
	if err != nil {
		return nil, err
	}
	est, err := s.estimator.Estimate(ctx, c.Channel, c.BaseTemplate, a, dups)
	if err != nil {
		return nil, fmt.Errorf("estimate campaign %d: %w", id, err)
	}
	return est, nil
}
