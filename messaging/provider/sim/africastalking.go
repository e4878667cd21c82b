package sim

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/campaignd/dispatch/platform/sms"
)

// Africa's Talking, PROVIDERS.md §1 and §2.
const (
	atAuthFailed   = "The supplied authentication is invalid"
	atCurrency     = "KES"
	atPartCost     = 0.8 // per message part
	atNetworkCode  = "99999"
	atShortCode    = "12345"
	atFailure      = "DeliveryFailure"
	atDateLayout   = "2006-01-02 15:04:05"
	atRejectedID   = "None"
	atRejectedCost = "0"
)

type atResponse struct {
	SMSMessageData atMessageData `json:"SMSMessageData"`
}

type atMessageData struct {
	Message    string        `json:"Message"`
	Recipients []atRecipient `json:"Recipients"`
}

type atRecipient struct {
	StatusCode   int    `json:"statusCode"`
	Number       string `json:"number"`
	Status       string `json:"status"`
	Cost         string `json:"cost"`
	MessageID    string `json:"messageId"`
	MessageParts int    `json:"messageParts,omitempty"`
}

func (s *Server) handleATSend(w http.ResponseWriter, r *http.Request) { s.serve(w, r, s.atSend) }

// atSend decides POST /version1/messaging. Refusals of a number come, as
// from Africa's Talking, inside a 201 as that recipient's statusCode; only
// credentials, a malformed request and throttling change the HTTP status.
func (s *Server) atSend(r *http.Request) reply {
	if s.chance(s.opts.ThrottleRate) {
		s.throttled()
		rep := textReply(http.StatusTooManyRequests, "Too Many Requests")
		rep.header.Set("Retry-After", "1")
		return rep
	}
	if err := r.ParseForm(); err != nil {
		s.reject(1)
		return textReply(http.StatusBadRequest, "Invalid request body")
	}
	if (s.opts.ATAPIKey != "" && r.Header.Get("apiKey") != s.opts.ATAPIKey) ||
		(s.opts.ATUsername != "" && r.Form.Get("username") != s.opts.ATUsername) {
		s.reject(1)
		return textReply(http.StatusUnauthorized, atAuthFailed)
	}
	var numbers []string
	for n := range strings.SplitSeq(r.Form.Get("to"), ",") {
		if n = strings.TrimSpace(n); n != "" {
			numbers = append(numbers, n)
		}
	}
	msg := r.Form.Get("message")
	switch {
	case len(numbers) == 0:
		s.reject(1)
		return textReply(http.StatusBadRequest, "Request is missing required form field 'to'")
	case msg == "":
		s.reject(1)
		return textReply(http.StatusBadRequest, "Request is missing required form field 'message'")
	}

	parts := max(sms.Analyze(msg).Segments, 1)
	cost := atPartCost * float64(parts)
	broke := s.broke(AfricasTalking)
	var (
		data atMessageData
		jobs []job
		sent int
	)
	for _, n := range numbers {
		rec := atRecipient{Number: n, Cost: atRejectedCost, MessageID: atRejectedID}
		out := permanent
		switch {
		case broke:
			rec.StatusCode, rec.Status = 405, "InsufficientBalance"
		case !validNumber(n):
			rec.StatusCode, rec.Status = 403, "InvalidPhoneNumber"
		default:
			out = s.decide()
			switch out {
			case accepted:
				rec.StatusCode, rec.Status = 101, "Success"
				rec.Cost = fmt.Sprintf("%s %.4f", atCurrency, cost)
				rec.MessageID = "ATXid_" + s.hex(16)
				rec.MessageParts = parts
			case permanent:
				rec.StatusCode, rec.Status = 403, "InvalidPhoneNumber"
			case transient:
				rec.StatusCode, rec.Status = 500, "InternalServerError"
			}
		}
		data.Recipients = append(data.Recipients, rec)
		if rec.StatusCode != 101 {
			s.reject(1)
			s.log.Debug("sim: africastalking refused", "to", n, "status", rec.Status)
			continue
		}
		sent++
		s.accept(AfricasTalking, n, msg)
		s.log.Debug("sim: africastalking accepted", "to", n, "id", rec.MessageID, "parts", parts)
		if j, ok := s.atReceipt(rec); ok {
			jobs = append(jobs, j)
		}
	}
	total := atRejectedCost
	if sent > 0 {
		total = fmt.Sprintf("%s %.4f", atCurrency, cost*float64(sent))
	}
	data.Message = fmt.Sprintf("Sent to %d/%d Total Cost: %s", sent, len(numbers), total)
	rep := jsonReply(http.StatusCreated, atResponse{data})
	rep.jobs = jobs
	return rep
}

// atReceipt is the delivery report for an accepted recipient, posted to
// ATDeliveryURL (none when it is not set).
func (s *Server) atReceipt(rec atRecipient) (job, bool) {
	target := s.opts.ATDeliveryURL
	if target == "" {
		return job{}, false
	}
	form := url.Values{
		"id":          {rec.MessageID},
		"status":      {"Success"},
		"phoneNumber": {rec.Number},
		"networkCode": {atNetworkCode},
		"retryCount":  {"0"},
	}
	if !s.chance(s.deliverRate) {
		form.Set("status", "Failed")
		form.Set("failureReason", atFailure)
	}
	twice := s.chance(s.opts.DuplicateReceipts)
	return job{
		delay: s.jitter(s.opts.ReceiptDelay, s.opts.ReceiptJitter),
		run: func(ctx context.Context) {
			s.receipt(ctx, target, form, nil)
			if twice {
				s.receipt(ctx, target, form, nil)
			}
		},
	}, true
}

// atInbound is an incoming SMS as Africa's Talking posts it.
func (s *Server) atInbound(from, text string) url.Values {
	id := s.hex(16)
	return url.Values{
		"from":        {from},
		"to":          {atShortCode},
		"text":        {text},
		"date":        {time.Now().UTC().Format(atDateLayout)},
		"id":          {id[:8] + "-" + id[8:12] + "-" + id[12:16] + "-" + id[16:20] + "-" + id[20:]},
		"networkCode": {atNetworkCode},
	}
}
