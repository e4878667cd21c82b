package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"github.com/campaignd/dispatch/campaign"
)

// statsCmd runs "dispatch stats rebuild [ID]": recount every campaign's (or
// one campaign's) counters from its messages, replace those that drifted,
// and say which did. Safe while the service runs (see
// campaign.Repo.RebuildStats).
func statsCmd(ctx context.Context, cfg Config, log *slog.Logger, args []string, out io.Writer) error {
	usage := fmt.Errorf("stats needs: rebuild [CAMPAIGN_ID]\n%s", Usage)
	if len(args) == 0 || args[0] != "rebuild" || len(args) > 2 {
		return usage
	}
	db, err := openMigrated(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.Close()
	repo := campaign.NewRepo(db)

	var ids []int64
	if len(args) == 2 {
		id, err := strconv.ParseInt(args[1], 10, 64)
		if err != nil || id <= 0 {
			return fmt.Errorf("stats rebuild: %q is not a campaign id", args[1])
		}
		ids = []int64{id}
	} else if ids, err = repo.CampaignIDs(ctx); err != nil {
		return err
	}
	fixed := 0
	for _, id := range ids {
		r, err := repo.RebuildStats(ctx, id)
		if err != nil {
			return err
		}
		if r.Drifted() {
			fixed++
			fmt.Fprintf(out, "campaign %d: counters %s, messages %s: corrected\n", id, statsLine(r.Kept), statsLine(r.Counted))
			log.Warn("campaign stats corrected", "campaign_id", id, "kept", r.Kept, "counted", r.Counted)
		}
	}
	fmt.Fprintf(out, "checked %d campaigns, corrected %d\n", len(ids), fixed)
	return nil
}

func statsLine(s campaign.Stats) string {
	return fmt.Sprintf("[pending %d sending %d sent %d delivered %d undelivered %d failed %d cancelled %d]",
		s.Pending, s.Sending, s.Sent, s.Delivered, s.Undelivered, s.Failed, s.Cancelled)
}
