package app

import (
	"context"
	"net"

	"github.com/labstack/echo/v4"

	"github.com/campaignd/dispatch/dashboard"
)

// mountDashboard serves the web dashboard on e under /ui ("/" redirects
// there). Its pages are clients of e itself, in-process, with the signed-in
// session's key; it reads no database.
func (a *App) mountDashboard(e *echo.Echo) error {
	nets, _ := a.cfg.TrustedProxies() // validated at load
	d, err := dashboard.New(dashboard.Options{
		API: e,
		Authenticate: func(ctx context.Context, key string) (string, error) {
			if a.cfg.Auth.Disabled {
				return "admin", nil
			}
			k, err := a.authn.Authenticate(ctx, key)
			return string(k.Scope), err
		},
		Redis:      a.apiRdb,
		KeyPrefix:  a.cfg.Redis.KeyPrefix,
		SessionTTL: a.cfg.Dashboard.SessionTTL,
		TrustedProxy: func(ip string) bool {
			p := net.ParseIP(ip)
			for _, n := range nets {
				if p != nil && n.Contains(p) {
					return true
				}
			}
			return false
		},
		Log: a.log.With("component", "dashboard"),
	})
	if err != nil {
		return err
	}
	d.Register(e)
	return nil
}
