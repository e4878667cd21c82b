package app

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/campaignd/dispatch/messaging/provider"
	"github.com/campaignd/dispatch/messaging/provider/africastalking"
	"github.com/campaignd/dispatch/messaging/provider/mock"
	"github.com/campaignd/dispatch/messaging/provider/twilio"
	"github.com/campaignd/dispatch/messaging/throttle"
	"github.com/campaignd/dispatch/platform/channel"
)

// Webhook paths providers call back, under PUBLIC_BASE_URL.
const (
	twilioStatusPath = "/webhooks/twilio/status"
)

// senders builds the provider of each channel from configuration. Each
// real provider is built once, whichever channels it carries, so its
// connection pool is shared.
func (a *App) senders() (provider.ByChannel, error) {
	cfg := a.cfg
	// Connections sized to the pool: every delivery goroutine may hold one.
	client := provider.HTTPClient(max(cfg.WorkerConcurrency, 1), cfg.Worker.SendTimeout)
	built := map[string]provider.Named{}
	build := func(name string) (provider.Named, error) {
		if s, ok := built[name]; ok {
			return s, nil
		}
		var s provider.Named
		var err error
		switch name {
		case mock.Name:
			var ledger mock.Ledger = mock.NewPostgresLedger(a.db)
			if cfg.Sender.Ledger == "memory" {
				ledger = mock.NewMemoryLedger()
			}
			s = mock.New(mock.Options{
				SuccessRate:          cfg.Sender.SuccessRate,
				PermanentFailureRate: cfg.Sender.PermanentFailureRate,
				MinLatency:           cfg.Sender.MinLatency,
				MaxLatency:           cfg.Sender.MaxLatency,
				Seed:                 cfg.Sender.Seed,
			}, ledger)
		case africastalking.Name:
			s, err = africastalking.New(africastalking.Config{
				BaseURL: cfg.AfricasTalking.BaseURL, Username: cfg.AfricasTalking.Username,
				APIKey: cfg.AfricasTalking.APIKey, SenderID: cfg.AfricasTalking.SenderID, Client: client,
			})
		case twilio.Name:
			s, err = twilio.New(twilio.Config{
				BaseURL: cfg.Twilio.BaseURL, AccountSID: cfg.Twilio.AccountSID, AuthToken: cfg.Twilio.AuthToken,
				From: cfg.Twilio.From, MessagingServiceSID: cfg.Twilio.MessagingServiceSID,
				WhatsAppFrom:   cfg.Twilio.WhatsAppFrom,
				StatusCallback: strings.TrimRight(cfg.PublicBaseURL, "/") + twilioStatusPath,
				Client:         client,
			})
		default:
			err = fmt.Errorf("unknown provider %q", name)
		}
		if err != nil {
			return nil, fmt.Errorf("provider %s: %w", name, err)
		}
		built[name] = s
		return s, nil
	}
	out := provider.ByChannel{}
	for ch, name := range map[channel.Channel]string{channel.SMS: cfg.Providers.SMS, channel.WhatsApp: cfg.Providers.WhatsApp} {
		s, err := build(name)
		if err != nil {
			return nil, err
		}
		out[ch] = s
	}
	return out, nil
}

// gate paces and brakes the providers for every replica, through rdb.
func (a *App) gate(rdb redis.UniversalClient) *throttle.Gate {
	cfg := a.cfg
	return throttle.New(rdb, cfg.Redis.KeyPrefix, throttle.Options{
		Rates: map[string]int{
			africastalking.Name: cfg.AfricasTalking.Rate,
			twilio.Name:         cfg.Twilio.Rate,
		},
		Brake:    cfg.Providers.Brake,
		MaxBrake: cfg.Providers.MaxBrake,
		CacheFor: 500 * time.Millisecond,
	})
}

// providerNames lists the distinct providers the configuration uses.
func (a *App) providerNames() []string {
	var out []string
	for _, name := range []string{a.cfg.Providers.SMS, a.cfg.Providers.WhatsApp} {
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out
}
