package messaging

import (
	"context"
	"errors"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nyaruka/phonenumbers"

	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

func TestEstimateCallingCode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		phone, want string
	}{
		{"+254712000001", "254"}, // Kenya
		{"+255712000001", "255"}, // Tanzania
		{"+14155550100", "1"},    // NANP, United States
		{"+12425550100", "1"},    // NANP, Bahamas: still 1, not 242
		{"+447911123456", "44"},
		{"+79161234567", "7"},
		{"+351912345678", "351"},
		{"+8613800138000", "86"},
		{"+80012345678", "800"}, // non-geographic (freephone)
		{"+88213012345", "882"}, // non-geographic (international networks)
		{"+2", ""},              // too short for any code
		{"+28", ""},             // 28x is unassigned
		{"+0123", ""},
		{"254712000001", ""}, // not E.164
		{"+", ""},
		{"", ""},
		{"+2a4", ""},
	}
	for _, tt := range tests {
		t.Run(tt.phone, func(t *testing.T) {
			if got := CallingCode(tt.phone); got != tt.want {
				t.Errorf("CallingCode(%q) = %q, want %q", tt.phone, got, tt.want)
			}
		})
	}
}

// The prefix lookup agrees with phonenumbers.Parse on every region's
// example numbers and every non-geographic code's.
func TestEstimateCallingCodeAgreesWithParse(t *testing.T) {
	t.Parallel()
	var numbers []*phonenumbers.PhoneNumber
	for region := range phonenumbers.GetSupportedRegions() {
		for _, typ := range []phonenumbers.PhoneNumberType{phonenumbers.MOBILE, phonenumbers.FIXED_LINE} {
			if n := phonenumbers.GetExampleNumberForType(region, typ); n != nil {
				numbers = append(numbers, n)
			}
		}
	}
	for code := range phonenumbers.GetSupportedGlobalNetworkCallingCodes() {
		if n := phonenumbers.GetExampleNumberForNonGeoEntity(code); n != nil {
			numbers = append(numbers, n)
		}
	}
	if len(numbers) < 400 {
		t.Fatalf("only %d example numbers", len(numbers))
	}
	for _, n := range numbers {
		e164 := phonenumbers.Format(n, phonenumbers.E164)
		parsed, err := phonenumbers.Parse(e164, "")
		if err != nil {
			t.Fatalf("parse %s: %v", e164, err)
		}
		if got, want := CallingCode(e164), strconv.Itoa(int(parsed.GetCountryCode())); got != want {
			t.Errorf("CallingCode(%s) = %q, Parse says %q", e164, got, want)
		}
	}
}

func TestEstimateParseMoney(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"0.80", 800_000, false},
		{"0.8", 800_000, false},
		{"1.10", 1_100_000, false},
		{"0.0079", 7_900, false},
		{"0.000001", 1, false},
		{"0", 0, false},
		{"12", 12_000_000, false},
		{"10000", 10_000_000_000, false},
		{"10000.000001", 0, true}, // over MaxPricePerSegment
		{"99999999999999999999", 0, true},
		{"0.0000001", 0, true}, // seven decimals
		{"", 0, true},
		{".5", 0, true},
		{"5.", 0, true},
		{"-1", 0, true},
		{"+1", 0, true},
		{"1e3", 0, true},
		{"1,5", 0, true},
		{" 1", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseMoney(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseMoney(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestEstimateFormatMoney(t *testing.T) {
	t.Parallel()
	tests := []struct {
		micros int64
		want   string
	}{
		{0, "0.00"},
		{1, "0.00"},
		{4_999, "0.00"},
		{5_000, "0.01"}, // half a cent rounds up
		{9_999, "0.01"},
		{800_000, "0.80"},
		{812_404_999, "812.40"},
		{812_405_000, "812.41"},
		{7_900 * 3, "0.02"}, // 0.0237
		{1_234_567_890_000, "1234567.89"},
	}
	for _, tt := range tests {
		if got := FormatMoney(tt.micros); got != tt.want {
			t.Errorf("FormatMoney(%d) = %q, want %q", tt.micros, got, tt.want)
		}
	}
}

func TestEstimatePricing(t *testing.T) {
	t.Parallel()
	p, err := NewPricing("KES", "0.80", map[string]string{"254": "0.80", "255": "1.10", "1": "0.0079"})
	if err != nil {
		t.Fatal(err)
	}
	for code, want := range map[string]int64{"254": 800_000, "255": 1_100_000, "1": 7_900, "44": 800_000, "": 800_000} {
		if got := p.PerSegment(code); got != want {
			t.Errorf("PerSegment(%q) = %d, want %d", code, got, want)
		}
	}

	// Price arithmetic: segments × price per country, summed exactly and
	// rounded once; a tenth of a cent a million times is 1,000.00, where
	// float64 would drift.
	tests := []struct {
		name      string
		segments  int64
		price     string
		wantTotal string
	}{
		{"1,015 segments at 0.80", 1015, "0.80", "812.00"},
		{"a million at a thousandth", 1_000_000, "0.001", "1000.00"},
		{"3 at 0.0079 is 0.0237", 3, "0.0079", "0.02"},
		{"7 at 0.0079 is 0.0553", 7, "0.0079", "0.06"},
		{"one at 0.005 rounds half up", 1, "0.005", "0.01"},
		{"10^8 segments at the highest price", 100_000_000, "10000", "1000000000000.00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			price, err := ParseMoney(tt.price)
			if err != nil {
				t.Fatal(err)
			}
			m, err := mulMoney(tt.segments, price)
			if err != nil {
				t.Fatal(err)
			}
			if got := FormatMoney(m); got != tt.wantTotal {
				t.Errorf("%d × %s = %s, want %s", tt.segments, tt.price, got, tt.wantTotal)
			}
		})
	}
	if _, err := mulMoney(1<<40, 10_000*microsPerUnit); err == nil {
		t.Error("mulMoney did not report an overflow")
	}

	_, err = NewPricing("kes", "x", map[string]string{"999": "1", "254": "-1"})
	want := `currency "kes" is not an ISO 4217 code such as KES; default_per_segment: "x" is not a decimal number such as 0.80; ` +
		`per_calling_code.254: "-1" is not a decimal number such as 0.80; per_calling_code: "999" is not a country calling code`
	if err == nil || err.Error() != want {
		t.Errorf("NewPricing error = %v\nwant %s", err, want)
	}
}

func TestEstimateAudience(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ctx := context.Background()
	// Customers 1-4 in Nairobi (4 opted out of sms), 5 in Dar (UCS-2
	// name), 6 in the US.
	_, err := db.ExecContext(ctx, `
INSERT INTO customers (id, phone, first_name, location) VALUES
  (1, '+254712000001', 'Amina', 'Nairobi'), (2, '+254712000002', 'Brian', 'nairobi'),
  (3, '+254712000003', 'Chloé', 'Nairobi'), (4, '+254712000004', 'Dan', 'Nairobi'),
  (5, '+255712000005', 'Zoë 🌟', 'Dar'),    (6, '+14155550106', 'Ed', 'Austin');
INSERT INTO customer_opt_outs (customer_id, channel) VALUES (4, 'sms'), (6, 'whatsapp')`)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPricing("KES", "2.00", map[string]string{"254": "0.80", "255": "1.10"})
	if err != nil {
		t.Fatal(err)
	}
	e := NewEstimator(db.DB, Limits{}, p)
	tmpl := "Hi {first_name}, 20% off in {location}!" // short: one segment each

	got, err := e.Estimate(ctx, channel.SMS, tmpl, Audience{Location: " NAIROBI "})
	if err != nil {
		t.Fatal(err)
	}
	want := Estimate{Recipients: 3, SkippedOptedOut: 1,
		Segments: EstimateSegments{Total: 3, MaxPerMessage: 1, ByEncoding: map[string]int64{"GSM-7": 3, "UCS-2": 0}},
		Cost: EstimateCost{Currency: "KES", Total: "2.40", ByCountry: []EstimateCountry{
			{CallingCode: "254", Recipients: 3, Segments: 3, Cost: "2.40"}}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Nairobi estimate (-want +got):\n%s", diff)
	}

	got, err = e.Estimate(ctx, channel.WhatsApp, tmpl, Audience{All: true})
	if err != nil {
		t.Fatal(err)
	}
	want = Estimate{Recipients: 5, SkippedOptedOut: 1,
		Segments: EstimateSegments{Total: 5, MaxPerMessage: 1, ByEncoding: map[string]int64{}},
		Cost: EstimateCost{Currency: "KES", Total: "4.30", ByCountry: []EstimateCountry{
			{CallingCode: "254", Recipients: 4, Segments: 4, Cost: "3.20"},
			{CallingCode: "255", Recipients: 1, Segments: 1, Cost: "1.10"}}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("WhatsApp estimate (-want +got):\n%s", diff)
	}

	got, err = e.Estimate(ctx, channel.SMS, tmpl, Audience{Location: "Atlantis"})
	if err != nil || got.Recipients != 0 || got.Cost.Total != "0.00" || len(got.Cost.ByCountry) != 0 {
		t.Errorf("empty audience: %+v, %v; want 0 recipients, no error", got, err)
	}

	if _, err := e.Estimate(ctx, channel.SMS, tmpl, Audience{CustomerIDs: []int64{1, 99, 98}}); !errors.Is(err, ErrUnknownCustomers) {
		t.Errorf("unknown ids: err = %v, want UNKNOWN_CUSTOMERS", err)
	}
}

// BenchmarkEstimateMillion estimates an SMS send to 1,000,000 customers
// (a tenth of them with UCS-2 names, a twentieth opted out, five calling
// codes), generated with one INSERT ... SELECT, and reports the seconds an
// estimate takes and the peak Go heap while it runs.
//
//	go test -run '^$' -bench EstimateMillion -benchtime 3x ./messaging/
func BenchmarkEstimateMillion(b *testing.B) {
	const n = 1_000_000
	db := pgtest.New(b)
	ctx := context.Background()
	start := time.Now()
	_, err := db.ExecContext(ctx, `
INSERT INTO customers (phone, first_name, last_name, location)
SELECT '+' || (ARRAY['254', '255', '256', '1415', '4479'])[1 + g % 5] || lpad(g::text, 8, '0'),
       CASE WHEN g % 10 = 0 THEN 'Zoë' ELSE 'Amina' END, 'Otieno', 'Nairobi'
FROM generate_series(1, $1) AS g`, n)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `
INSERT INTO customer_opt_outs (customer_id, channel) SELECT id, 'sms' FROM customers WHERE id % 20 = 0;
ANALYZE customers; ANALYZE customer_opt_outs`); err != nil {
		b.Fatal(err)
	}
	b.Logf("generated %d customers in %s", n, time.Since(start).Round(time.Millisecond))
	p, err := NewPricing("KES", "0.80", map[string]string{"254": "0.80", "255": "1.10", "1": "0.0079"})
	if err != nil {
		b.Fatal(err)
	}
	e := NewEstimator(db.DB, Limits{}, p)
	tmpl := "Hi {first_name} {last_name}! Our {location} store has 20% off everything this weekend. Show this message at the till. Reply STOP to opt out."

	peak := watchHeap(b)
	b.ResetTimer()
	var est Estimate
	for b.Loop() {
		if est, err = e.Estimate(ctx, channel.SMS, tmpl, Audience{All: true}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if est.Recipients != n-n/20 || est.SkippedOptedOut != n/20 {
		b.Fatalf("estimate: %+v", est)
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/estimate")
	b.ReportMetric(float64(peak())/(1<<20), "peak-heap-MiB")
	b.Logf("%d recipients, %d segments %v, cost %s %s", est.Recipients, est.Segments.Total, est.Segments.ByEncoding, est.Cost.Total, est.Cost.Currency)
}

// watchHeap samples the live heap (runtime/metrics, which does not stop
// the world) every millisecond until the benchmark ends, and returns a
// function that reports the highest sample.
func watchHeap(b *testing.B) func() uint64 {
	runtime.GC()
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // exits when stop is closed
		sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				metrics.Read(sample)
				if v := sample[0].Value.Uint64(); v > peak.Load() {
					peak.Store(v)
				}
			}
		}
	})
	var once sync.Once
	done := func() { once.Do(func() { close(stop); wg.Wait() }) }
	b.Cleanup(done)
	return func() uint64 { done(); return peak.Load() }
}
