package app

import (
	"context"

	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/platform/metrics"
)

// newMetrics builds this replica's metrics. It needs the database and the
// messaging service, and the worker pool needs it (as its Observer).
func (a *App) newMetrics() *metrics.Registry {
	return metrics.New(metrics.Options{
		DB:      a.db.DB,
		DBName:  "dispatch",
		Depths:  queueDepths{a.messaging},
		Brakes:  providerBrakes{a},
		Workers: a.cfg.WorkerConcurrency,
		Log:     a.log.With("component", "metrics"),
	})
}

// queueDepths adapts the messaging feature's queue depths to
// metrics.DepthSource, naming the states as dispatch_queue_depth does.
type queueDepths struct{ svc *messaging.Service }

func (q queueDepths) Depths(ctx context.Context) (map[string]int64, error) {
	d, err := q.svc.QueueDepths(ctx)
	if err != nil {
		return nil, err
	}
	return map[string]int64{"ready": d.Ready, "processing": d.Processing, "delayed": d.Delayed, "dead": d.Dead}, nil
}

// providerBrakes adapts the provider gate to metrics.BrakeSource.
type providerBrakes struct{ a *App }

func (p providerBrakes) Braked(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	for _, name := range p.a.providerNames() {
		st, err := p.a.probeGate.Status(ctx, name)
		if err != nil {
			return nil, err
		}
		out[name] = st.Braked
	}
	return out, nil
}
