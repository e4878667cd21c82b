package sim

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/campaignd/dispatch/messaging/provider/twilio"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/sms"
)

// Twilio, PROVIDERS.md §3 and §4.
const (
	twilioAPIVersion  = "2010-04-01"
	twilioDateLayout  = "Mon, 02 Jan 2006 15:04:05 -0700" // RFC 2822, as Twilio writes it
	twilioDlrLayout   = "0601021504"                      // RawDlrDoneDate, YYMMDDhhmm
	twilioMaxBody     = 1600
	twilioUndelivered = "30003"
	whatsappPrefix    = "whatsapp:"
	// The numbers the simulated account sends from when a request names a
	// messaging service instead of a sender, and receives inbound on: Twilio's
	// test number and WhatsApp sandbox.
	twilioSMSNumber      = "+15005550006"
	twilioWhatsAppNumber = "+14155238886"
	twilioNoAccount      = "AC00000000000000000000000000000000"
)

// twilioMessage is the Message resource (twilio-oai api_v2010.message).
// Nullable fields are pointers so that they marshal as null.
type twilioMessage struct {
	AccountSID          string            `json:"account_sid"`
	APIVersion          string            `json:"api_version"`
	Body                string            `json:"body"`
	DateCreated         string            `json:"date_created"`
	DateSent            *string           `json:"date_sent"`
	DateUpdated         string            `json:"date_updated"`
	Direction           string            `json:"direction"`
	ErrorCode           *int              `json:"error_code"`
	ErrorMessage        *string           `json:"error_message"`
	From                *string           `json:"from"`
	MessagingServiceSID *string           `json:"messaging_service_sid"`
	NumMedia            string            `json:"num_media"`
	NumSegments         string            `json:"num_segments"`
	Price               *string           `json:"price"`
	PriceUnit           string            `json:"price_unit"`
	SID                 string            `json:"sid"`
	Status              string            `json:"status"`
	SubresourceURIs     map[string]string `json:"subresource_uris"`
	To                  string            `json:"to"`
	URI                 string            `json:"uri"`
}

type twilioError struct {
	Code     int    `json:"code"`
	Message  string `json:"message"`
	MoreInfo string `json:"more_info"`
	Status   int    `json:"status"`
}

func twilioErrorReply(status, code int, msg string) reply {
	return jsonReply(status, twilioError{
		Code:     code,
		Message:  msg,
		MoreInfo: "https://www.twilio.com/docs/errors/" + strconv.Itoa(code),
		Status:   status,
	})
}

func twilioAuthReply() reply {
	rep := twilioErrorReply(http.StatusUnauthorized, 20003, "Authenticate")
	rep.header.Set("WWW-Authenticate", `Basic realm="Twilio API"`)
	return rep
}

func (s *Server) handleTwilioSend(w http.ResponseWriter, r *http.Request) {
	s.serve(w, r, s.twilioSend)
}

// twilioSend decides POST /2010-04-01/Accounts/{AccountSid}/Messages.json.
func (s *Server) twilioSend(r *http.Request) reply {
	if s.chance(s.opts.ThrottleRate) {
		s.throttled()
		rep := twilioErrorReply(http.StatusTooManyRequests, 20429, "Too Many Requests")
		rep.header.Set("Retry-After", "1")
		return rep
	}
	sid := r.PathValue("AccountSid")
	user, pass, ok := r.BasicAuth()
	if !ok || (s.opts.TwilioAccountSID != "" && (user != s.opts.TwilioAccountSID || sid != s.opts.TwilioAccountSID)) ||
		(s.opts.TwilioAuthToken != "" && pass != s.opts.TwilioAuthToken) {
		s.reject(1)
		return twilioAuthReply()
	}
	if s.broke(Twilio) {
		s.reject(1)
		return twilioAuthReply()
	}
	if err := r.ParseForm(); err != nil {
		s.reject(1)
		return twilioErrorReply(http.StatusBadRequest, 20001, "Invalid request body")
	}
	f := r.Form
	to, from, service := f.Get("To"), f.Get("From"), f.Get("MessagingServiceSid")
	body, content := f.Get("Body"), f.Get("ContentSid")
	var bad reply
	switch {
	case to == "":
		bad = twilioErrorReply(http.StatusBadRequest, 21604, "A 'To' phone number is required.")
	case from == "" && service == "":
		bad = twilioErrorReply(http.StatusBadRequest, 21603, "A 'From' phone number is required.")
	case body == "" && content == "" && f.Get("MediaUrl") == "":
		bad = twilioErrorReply(http.StatusBadRequest, 21602, "Message body is required.")
	case utf8.RuneCountInString(body) > twilioMaxBody:
		bad = twilioErrorReply(http.StatusBadRequest, 21617, "The concatenated message body exceeds the 1600 character limit.")
	case !validNumber(strings.TrimPrefix(to, whatsappPrefix)):
		bad = twilioErrorReply(http.StatusBadRequest, 21211, fmt.Sprintf("Invalid 'To' Phone Number: %s", to))
	}
	if bad.status != 0 {
		s.reject(1)
		return bad
	}
	switch s.decide() {
	case permanent:
		s.reject(1)
		s.log.Debug("sim: twilio refused", "to", to, "code", 21211)
		return twilioErrorReply(http.StatusBadRequest, 21211, fmt.Sprintf("Invalid 'To' Phone Number: %s", to))
	case transient:
		s.reject(1)
		s.log.Debug("sim: twilio refused", "to", to, "code", 20503)
		return twilioErrorReply(http.StatusServiceUnavailable, 20503, "Service Unavailable")
	}

	now := time.Now().UTC().Format(twilioDateLayout)
	msid := "SM" + s.hex(16)
	uri := "/" + twilioAPIVersion + "/Accounts/" + sid + "/Messages/" + msid
	m := twilioMessage{
		AccountSID:      sid,
		APIVersion:      twilioAPIVersion,
		Body:            body,
		DateCreated:     now,
		DateUpdated:     now,
		Direction:       "outbound-api",
		NumMedia:        "0",
		NumSegments:     strconv.Itoa(twilioSegments(to, body)),
		PriceUnit:       "USD",
		SID:             msid,
		Status:          "queued",
		SubresourceURIs: map[string]string{"media": uri + "/Media.json"},
		To:              to,
		URI:             uri + ".json",
	}
	if from != "" {
		m.From = &from
	}
	if service != "" {
		m.MessagingServiceSID = &service
		if from == "" {
			// A service picks the sender later: Twilio answers "accepted"
			// with no sender and "0" segments.
			m.Status, m.NumSegments = "accepted", "0"
			from = twilioSMSNumber
			if strings.HasPrefix(to, whatsappPrefix) {
				from = whatsappPrefix + twilioWhatsAppNumber
			}
		}
	}
	key := body
	if key == "" {
		key = "ContentSid:" + content + " " + f.Get("ContentVariables")
	}
	s.accept(Twilio, to, key)
	s.log.Debug("sim: twilio accepted", "to", to, "sid", msid)
	rep := jsonReply(http.StatusCreated, m)
	if cb := f.Get("StatusCallback"); cb != "" {
		rep.jobs = []job{s.twilioReceipt(cb, sid, msid, service, from, to)}
	}
	return rep
}

// twilioSegments is what num_segments says: WhatsApp messages are one.
func twilioSegments(to, body string) int {
	if strings.HasPrefix(to, whatsappPrefix) {
		return 1
	}
	return max(sms.Analyze(body).Segments, 1)
}

// twilioReceipt is the status callback for an accepted message: the final
// status (twice with DuplicateReceipts), then with OutOfOrder an
// intermediate "sent" that arrives too late. Each is signed.
func (s *Server) twilioReceipt(target, account, msid, service, from, to string) job {
	form := func(status string) url.Values {
		v := url.Values{
			"MessageSid":    {msid},
			"SmsSid":        {msid},
			"MessageStatus": {status},
			"SmsStatus":     {status},
			"AccountSid":    {account},
			"From":          {from},
			"To":            {to},
			"ApiVersion":    {twilioAPIVersion},
		}
		if service != "" {
			v.Set("MessagingServiceSid", service)
		}
		return v
	}
	final := form("delivered")
	if !s.chance(s.deliverRate) {
		final = form("undelivered")
		final.Set("ErrorCode", twilioUndelivered)
	}
	twice := s.chance(s.opts.DuplicateReceipts)
	late := s.opts.OutOfOrder
	return job{
		delay: s.jitter(s.opts.ReceiptDelay, s.opts.ReceiptJitter),
		run: func(ctx context.Context) {
			final.Set("RawDlrDoneDate", time.Now().UTC().Format(twilioDlrLayout))
			s.receipt(ctx, target, final, s.signed(target, final))
			if twice {
				s.receipt(ctx, target, final, s.signed(target, final))
			}
			if late {
				sent := form("sent")
				s.receipt(ctx, target, sent, s.signed(target, sent))
			}
		},
	}
}

func (s *Server) signed(target string, form url.Values) http.Header {
	return http.Header{"X-Twilio-Signature": {twilio.Signature(s.opts.TwilioAuthToken, target, form)}}
}

// twilioInbound is an incoming message as Twilio posts it to the number's
// webhook.
func (s *Server) twilioInbound(ch channel.Channel, from, body string) url.Values {
	sid := "SM" + s.hex(16)
	account := s.opts.TwilioAccountSID
	if account == "" {
		account = twilioNoAccount
	}
	to := twilioSMSNumber
	v := url.Values{
		"MessageSid":    {sid},
		"SmsSid":        {sid},
		"SmsMessageSid": {sid},
		"AccountSid":    {account},
		"Body":          {body},
		"NumMedia":      {"0"},
		"NumSegments":   {"1"},
		"SmsStatus":     {"received"},
		"ApiVersion":    {twilioAPIVersion},
	}
	if ch == channel.WhatsApp {
		number := strings.TrimPrefix(from, whatsappPrefix)
		from = whatsappPrefix + number
		to = whatsappPrefix + twilioWhatsAppNumber
		v.Set("WaId", strings.TrimPrefix(number, "+"))
		v.Set("ProfileName", "Sim User")
	}
	v.Set("From", from)
	v.Set("To", to)
	return v
}
