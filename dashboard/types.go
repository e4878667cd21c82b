package dashboard

import "time"

// The API's shapes, as far as the pages show them (app/openapi.yaml is
// their contract).

type stats struct {
	Total       int64 `json:"total"`
	Pending     int64 `json:"pending"`
	Sending     int64 `json:"sending"`
	Sent        int64 `json:"sent"`
	Delivered   int64 `json:"delivered"`
	Undelivered int64 `json:"undelivered"`
	Failed      int64 `json:"failed"`
	Cancelled   int64 `json:"cancelled"`
}

// Done is how many messages have ended (sent, delivered, undelivered,
// failed or cancelled).
func (s stats) Done() int64 { return s.Sent + s.Delivered + s.Undelivered + s.Failed + s.Cancelled }

// Percent is Done as a whole percentage of Total (0 with no messages).
func (s stats) Percent() int64 {
	if s.Total == 0 {
		return 0
	}
	return s.Done() * 100 / s.Total
}

type pagination struct {
	Page       int     `json:"page"`
	PageSize   int     `json:"page_size"`
	TotalCount int64   `json:"total_count"`
	TotalPages int64   `json:"total_pages"`
	NextCursor *string `json:"next_cursor"`
}

type campaignSummary struct {
	ID          int64      `json:"id"`
	Name        string     `json:"name"`
	Channel     string     `json:"channel"`
	Status      string     `json:"status"`
	ScheduledAt *time.Time `json:"scheduled_at"`
	CreatedAt   time.Time  `json:"created_at"`
	Stats       stats      `json:"stats"`
}

// Live reports whether the campaign's numbers can still move.
func (c campaignSummary) Live() bool { return c.Status == "sending" }

type audience struct {
	All              bool    `json:"all,omitempty"`
	Location         string  `json:"location,omitempty"`
	PreferredProduct string  `json:"preferred_product,omitempty"`
	CustomerIDs      []int64 `json:"customer_ids,omitempty"`
}

type sendWindow struct {
	Start    string `json:"start"`
	End      string `json:"end"`
	Timezone string `json:"timezone"`
}

type campaign struct {
	campaignSummary
	BaseTemplate    string      `json:"base_template"`
	Audience        *audience   `json:"audience"`
	StatusReason    *string     `json:"status_reason"`
	SendWindow      *sendWindow `json:"send_window"`
	StartedAt       *time.Time  `json:"started_at"`
	FinishedAt      *time.Time  `json:"finished_at"`
	NextWindowOpens *time.Time  `json:"next_window_opens_at"`
	Progress        struct {
		RatePerSecond float64 `json:"rate_per_second"`
		ETA           *string `json:"eta"`
	} `json:"progress"`
}

// Editable reports whether compose may still change the campaign.
func (c campaign) Editable() bool { return c.Status == "draft" || c.Status == "scheduled" }

type message struct {
	ID              int64      `json:"id"`
	CampaignID      int64      `json:"campaign_id"`
	CustomerID      *int64     `json:"customer_id"`
	Phone           *string    `json:"phone"`
	Status          string     `json:"status"`
	Attempts        int        `json:"attempts"`
	LastError       *string    `json:"last_error"`
	RenderedContent *string    `json:"rendered_content"`
	Segments        *int       `json:"segments"`
	Cost            *string    `json:"cost"`
	Currency        *string    `json:"currency"`
	CreatedAt       time.Time  `json:"created_at"`
	SentAt          *time.Time `json:"sent_at"`
	UpdatedAt       time.Time  `json:"updated_at"`
	AttemptsLog     []struct {
		Attempt        int       `json:"attempt"`
		StartedAt      time.Time `json:"started_at"`
		DurationMS     int       `json:"duration_ms"`
		Outcome        string    `json:"outcome"`
		Error          *string   `json:"error"`
		ProviderStatus *string   `json:"provider_status"`
	} `json:"attempts_log"`
}

type customer struct {
	ID               int64     `json:"id"`
	Phone            string    `json:"phone"`
	FirstName        string    `json:"first_name"`
	LastName         string    `json:"last_name"`
	Location         string    `json:"location"`
	PreferredProduct string    `json:"preferred_product"`
	OptedOut         []string  `json:"opted_out_channels"`
	CreatedAt        time.Time `json:"created_at"`
}

// OptedOutOf reports whether the customer opted out of channel.
func (c customer) OptedOutOf(channel string) bool {
	for _, ch := range c.OptedOut {
		if ch == channel {
			return true
		}
	}
	return false
}

type preview struct {
	RenderedMessage string   `json:"rendered_message"`
	Warnings        []string `json:"warnings"`
	SMS             *struct {
		Encoding   string   `json:"encoding"`
		Characters int      `json:"characters"`
		Segments   int      `json:"segments"`
		NonGSM     []string `json:"non_gsm_characters"`
	} `json:"sms"`
}

type estimate struct {
	Recipients        int64 `json:"recipients"`
	SkippedOptedOut   int64 `json:"skipped_opted_out"`
	DuplicatesRemoved int64 `json:"duplicates_removed"`
	TooLong           int64 `json:"too_long"`
	Segments          struct {
		Total         int64            `json:"total"`
		MaxPerMessage int              `json:"max_per_message"`
		ByEncoding    map[string]int64 `json:"by_encoding"`
	} `json:"segments"`
	Cost struct {
		Currency  string `json:"currency"`
		Total     string `json:"total"`
		ByCountry []struct {
			CallingCode string `json:"calling_code"`
			Recipients  int64  `json:"recipients"`
			Segments    int64  `json:"segments"`
			Cost        string `json:"cost"`
		} `json:"by_country"`
	} `json:"cost"`
}

type queueHealth struct {
	Ready        int64 `json:"ready"`
	Processing   int64 `json:"processing"`
	Delayed      int64 `json:"delayed"`
	Dead         int64 `json:"dead_letter"`
	Consumers    int64 `json:"consumers"`
	ConsumerList []struct {
		ID             string `json:"id"`
		InFlight       int64  `json:"in_flight"`
		HeartbeatAgeMS int64  `json:"heartbeat_age_ms"`
	} `json:"consumer_list"`
	Throughput []struct {
		Start    time.Time        `json:"start"`
		Outcomes map[string]int64 `json:"outcomes"`
	} `json:"throughput"`
}
