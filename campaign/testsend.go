package campaign

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/campaignd/dispatch/messaging/template"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
)

// TestSender delivers one test message now; the messaging feature
// implements it (through an adapter in app). It returns the message as the
// messages API shows it, JSON-encodable (messaging owns that shape), with
// "test": true, once it is stored; delivery continues in the background.
type TestSender interface {
	TestSend(ctx context.Context, m TestSend) (any, error)
}

// TestSend is a test message to deliver: Template rendered with Fields, to
// Phone. It has the fields of messaging.TestSend.
type TestSend struct {
	CampaignID int64
	Channel    channel.Channel
	Template   string
	Phone      string          // E.164
	Fields     template.Fields // Fields.Phone is Phone: {phone} renders the phone sent to
}

// TestSendInput is the body of POST /campaigns/{id}/test-send.
type TestSendInput struct {
	Phone      string `json:"phone"`
	CustomerID *int64 `json:"customer_id"`
}

// testSends is what WithTestSend configures.
type testSends struct {
	sender TestSender
	// phone normalises a phone number as customers' phones are (E.164,
	// a national number read in the default region); its error's text is
	// for the client.
	phone func(string) (string, error)
}

// WithTestSend enables TestSend: t delivers, normalizePhone reads the
// phone as the customer feature reads customers' phones (campaign cannot
// import that feature, so the app passes its rule in).
func (s *Service) WithTestSend(t TestSender, normalizePhone func(string) (string, error)) *Service {
	s.testSends = testSends{sender: t, phone: normalizePhone}
	return s
}

// TestSend renders campaign id's template with customer in.CustomerID's
// fields, or none, for in.Phone ({phone} renders in.Phone), and delivers it
// as a test message, whatever the campaign's status, leaving the campaign
// and its stats unchanged. The body is checked first (VALIDATION_ERROR
// naming phone or customer_id), then the campaign (CAMPAIGN_NOT_FOUND) and
// the customer (CUSTOMER_NOT_FOUND); the sender may refuse a phone that
// opted out of the channel (RECIPIENT_OPTED_OUT).
func (s *Service) TestSend(ctx context.Context, id int64, in TestSendInput) (any, error) {
	if strings.TrimSpace(in.Phone) == "" {
		return nil, errs.Validation("phone", "phone is required")
	}
	phone, err := s.testSends.phone(in.Phone)
	if err != nil {
		var e *errs.Error
		if errors.As(err, &e) {
			return nil, err
		}
		return nil, errs.Validation("phone", "%s", err.Error())
	}
	if in.CustomerID != nil && *in.CustomerID <= 0 {
		return nil, errs.Validation("customer_id", "customer_id must be a positive integer, got %d", *in.CustomerID)
	}
	c, err := s.repo.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	var fields template.Fields
	if in.CustomerID != nil {
		contact, err := s.customers.Contact(ctx, *in.CustomerID)
		if err != nil {
			return nil, fmt.Errorf("test send of campaign %d: customer %d: %w", id, *in.CustomerID, err)
		}
		fields = contact.Fields
	}
	fields.Phone = phone
	m, err := s.testSends.sender.TestSend(ctx, TestSend{CampaignID: id, Channel: c.Channel, Template: c.BaseTemplate, Phone: phone, Fields: fields})
	if err != nil {
		return nil, fmt.Errorf("test send of campaign %d: %w", id, err)
	}
	return m, nil
}
