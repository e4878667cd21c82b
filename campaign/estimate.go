package campaign

import (
	"context"
	"fmt"

	"github.com/campaignd/dispatch/platform/channel"
)

// Estimator sizes and prices a send without creating anything; the
// messaging feature implements it (through an adapter in app).
type Estimator interface {
	// Estimate renders tmpl for every customer of a who has not opted out
	// of channel, as delivery would, and counts recipients, segments and
	// cost. The ids of a are distinct. Unknown ids give an
	// UNKNOWN_CUSTOMERS error; an audience matching nobody is an estimate
	// of 0. DuplicatesRemoved is left 0.
	Estimate(ctx context.Context, ch channel.Channel, tmpl string, a Audience) (Estimate, error)
}

// Estimate is the body of POST /campaigns/{id}/estimate: what a send with
// the same body would create and cost. It has the fields of
// messaging.Estimate, which converts to it; the nested types are aliases of
// unnamed structs for that reason.
type Estimate struct {
	// Recipients counts the messages a send would create (opted-out
	// customers and duplicates left out).
	Recipients        int64 `json:"recipients"`
	SkippedOptedOut   int64 `json:"skipped_opted_out"`
	DuplicatesRemoved int   `json:"duplicates_removed"`
	// TooLong counts recipients whose message is longer than the channel
	// takes: delivery would fail them, so they add no segments or cost.
	TooLong  int64            `json:"too_long"`
	Segments EstimateSegments `json:"segments"`
	Cost     EstimateCost     `json:"cost"`
}

// EstimateSegments counts billed segments: total, the most one message
// takes, and by encoding (GSM-7 and UCS-2 for SMS; empty for WhatsApp,
// where a message is one segment).
type EstimateSegments = struct {
	Total         int64            `json:"total"`
	MaxPerMessage int              `json:"max_per_message"`
	ByEncoding    map[string]int64 `json:"by_encoding"`
}

// EstimateCost is the segments priced per calling code; amounts are
// decimals with two places.
type EstimateCost = struct {
	Currency  string            `json:"currency"`
	Total     string            `json:"total"`
	ByCountry []EstimateCountry `json:"by_country"`
}

// EstimateCountry is the share of one calling code.
type EstimateCountry = struct {
	CallingCode string `json:"calling_code"`
	Recipients  int64  `json:"recipients"`
	Segments    int64  `json:"segments"`
	Cost        string `json:"cost"`
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
func (s *Service) Estimate(ctx context.Context, id int64, in SendInput) (Estimate, error) {
	c, err := s.repo.Get(ctx, id)
	if err != nil {
		return Estimate{}, err
	}
	a, dups, err := resolveAudience(in, c.Audience)
	if err != nil {
		return Estimate{}, err
	}
	est, err := s.estimator.Estimate(ctx, c.Channel, c.BaseTemplate, a)
	if err != nil {
		return Estimate{}, fmt.Errorf("estimate campaign %d: %w", id, err)
	}
	est.DuplicatesRemoved = dups
	return est, nil
}
