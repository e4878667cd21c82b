package webhooksig

import (
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The vector of PROVIDERS.md §5 (standard-webhooks' library tests).
const (
	vecSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vecID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vecTS     = 1614265330
	vecBody   = `{"test": 2432232314}`
	vecSig    = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func headers(id, ts, sig string) http.Header {
	h := http.Header{}
	if id != "" {
		h.Set(HeaderID, id)
	}
	if ts != "" {
		h.Set(HeaderTimestamp, ts)
	}
	if sig != "" {
		h.Set(HeaderSignature, sig)
	}
	return h
}

func TestSignVector(t *testing.T) {
	t.Parallel()
	for _, secret := range []string{vecSecret, strings.TrimPrefix(vecSecret, SecretPrefix)} {
		got, err := Sign(secret, vecID, time.Unix(vecTS, 0), []byte(vecBody))
		if err != nil {
			t.Fatalf("Sign(%q): %v", secret, err)
		}
		if got != vecSig {
			t.Errorf("Sign(%q) = %q, want %q", secret, got, vecSig)
		}
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	ts := strconv.Itoa(vecTS)
	at := time.Unix(vecTS, 0)
	otherSecret, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		secret    string
		header    http.Header
		body      string
		now       time.Time
		tolerance time.Duration
		want      error
	}{
		{"vector, tolerance off", vecSecret, headers(vecID, ts, vecSig), vecBody, time.Now(), 0, nil},
		{"secret without prefix", strings.TrimPrefix(vecSecret, SecretPrefix), headers(vecID, ts, vecSig), vecBody, at, 0, nil},
		{"changed body", vecSecret, headers(vecID, ts, vecSig), `{"test": 2432232315}`, at, 0, ErrNoMatchingSignature},
		{"body with a trailing newline", vecSecret, headers(vecID, ts, vecSig), vecBody + "\n", at, 0, ErrNoMatchingSignature},
		{"wrong secret", otherSecret, headers(vecID, ts, vecSig), vecBody, at, 0, ErrNoMatchingSignature},
		{"changed id", vecSecret, headers(vecID+"x", ts, vecSig), vecBody, at, 0, ErrNoMatchingSignature},
		{"changed timestamp", vecSecret, headers(vecID, strconv.Itoa(vecTS+1), vecSig), vecBody, at, 0, ErrNoMatchingSignature},
		{"timestamp written differently", vecSecret, headers(vecID, "0"+ts, vecSig), vecBody, at, 0, ErrNoMatchingSignature},
		{"rotation: one good entry among several", vecSecret,
			headers(vecID, ts, "v1,Zm9vYmFy v1a,"+strings.TrimPrefix(vecSig, "v1,")+" v2,xxx "+vecSig+" v1,!!notbase64"), vecBody, at, 0, nil},
		{"good signature under another version", vecSecret, headers(vecID, ts, "v1a,"+strings.TrimPrefix(vecSig, "v1,")), vecBody, at, 0, ErrNoMatchingSignature},
		{"bare signature without version", vecSecret, headers(vecID, ts, strings.TrimPrefix(vecSig, "v1,")), vecBody, at, 0, ErrNoMatchingSignature},
		{"missing id", vecSecret, headers("", ts, vecSig), vecBody, at, 0, ErrMissingHeaders},
		{"missing timestamp", vecSecret, headers(vecID, "", vecSig), vecBody, at, 0, ErrMissingHeaders},
		{"missing signature", vecSecret, headers(vecID, ts, ""), vecBody, at, 0, ErrMissingHeaders},
		{"timestamp not a number", vecSecret, headers(vecID, "2021-02-26T00:00:00Z", vecSig), vecBody, at, 0, ErrInvalidTimestamp},
		{"negative timestamp", vecSecret, headers(vecID, "-1", vecSig), vecBody, at, 0, ErrInvalidTimestamp},
		{"timestamp overflows", vecSecret, headers(vecID, strings.Repeat("9", 30), vecSig), vecBody, at, 0, ErrInvalidTimestamp},
		{"within tolerance, behind", vecSecret, headers(vecID, ts, vecSig), vecBody, at.Add(5 * time.Minute), 5 * time.Minute, nil},
		{"within tolerance, ahead", vecSecret, headers(vecID, ts, vecSig), vecBody, at.Add(-5 * time.Minute), 5 * time.Minute, nil},
		{"too old", vecSecret, headers(vecID, ts, vecSig), vecBody, at.Add(5*time.Minute + time.Second), 5 * time.Minute, ErrTimestampTooOld},
		{"too new", vecSecret, headers(vecID, ts, vecSig), vecBody, at.Add(-5*time.Minute - time.Second), 5 * time.Minute, ErrTimestampTooNew},
		{"too old is checked before the signature", vecSecret, headers(vecID, ts, "v1,Zm9vYmFy"), vecBody, at.Add(time.Hour), 5 * time.Minute, ErrTimestampTooOld},
		{"secret not base64", "whsec_!!!", headers(vecID, ts, vecSig), vecBody, at, 0, ErrInvalidSecret},
		{"empty secret", "whsec_", headers(vecID, ts, vecSig), vecBody, at, 0, ErrInvalidSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := Verify(tt.secret, tt.header, []byte(tt.body), tt.now, tt.tolerance)
			if !errors.Is(err, tt.want) {
				t.Errorf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestVerifyReceivedHeaders checks that headers written in any case (as a
// client or a proxy may write them; net/http canonicalises them on receipt)
// are found.
func TestVerifyReceivedHeaders(t *testing.T) {
	t.Parallel()
	h := http.Header{}
	h.Add("Webhook-Id", vecID)
	h.Add("WEBHOOK-TIMESTAMP", strconv.Itoa(vecTS))
	h.Add("webhook-signature", vecSig)
	if err := Verify(vecSecret, h, []byte(vecBody), time.Unix(vecTS, 0), time.Minute); err != nil {
		t.Errorf("Verify = %v, want nil", err)
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	t.Parallel()
	secret, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	body := []byte(`{"id":"evt_1","type":"campaign.finished","data":{}}`)
	sig, err := Sign(secret, "evt_1", now, body)
	if err != nil {
		t.Fatal(err)
	}
	h := headers("evt_1", strconv.FormatInt(now.Unix(), 10), sig)
	if err := Verify(secret, h, body, now, 5*time.Minute); err != nil {
		t.Errorf("Verify = %v, want nil", err)
	}
}

func TestNewSecret(t *testing.T) {
	t.Parallel()
	a, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Errorf("two secrets are the same: %q", a)
	}
	rest, ok := strings.CutPrefix(a, SecretPrefix)
	if !ok {
		t.Fatalf("secret %q does not start with %q", a, SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(rest)
	if err != nil {
		t.Fatalf("secret %q: %v", a, err)
	}
	if len(key) != 32 {
		t.Errorf("key is %d bytes, want 32", len(key))
	}
}

func TestSignInvalidSecret(t *testing.T) {
	t.Parallel()
	if _, err := Sign("whsec_not base64", "id", time.Now(), nil); !errors.Is(err, ErrInvalidSecret) {
		t.Errorf("Sign = %v, want ErrInvalidSecret", err)
	}
}
