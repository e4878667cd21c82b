package httpx

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/labstack/echo/v4"
)

// sendShape is the shape of POST /campaigns/{id}/send's body.
type sendShape struct {
	CustomerIDs []int64 `json:"customer_ids"`
	Audience    *struct {
		CustomerIDs      []int64 `json:"customer_ids,omitempty"`
		All              bool    `json:"all,omitempty"`
		Location         string  `json:"location,omitempty"`
		PreferredProduct string  `json:"preferred_product,omitempty"`
	} `json:"audience"`
}

// sendBody100k is a send to 100,000 customer ids (about 800 kB).
func sendBody100k() []byte {
	var buf bytes.Buffer
	buf.WriteString(`{"customer_ids":[`)
	for i := range 100_000 {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString(strconv.Itoa(1_000_000 + i))
	}
	buf.WriteString(`]}`)
	return buf.Bytes()
}

// BenchmarkBindJSONSend100k binds the largest body the API takes on its
// hottest path: a send to 100,000 customer ids.
func BenchmarkBindJSONSend100k(b *testing.B) {
	body := sendBody100k()
	e := echo.New()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		req.Header.Set(echo.HeaderContentType, echo.MIMEApplicationJSON)
		var dst sendShape
		if err := BindJSON(e.NewContext(req, httptest.NewRecorder()), &dst); err != nil {
			b.Fatal(err)
		}
		if len(dst.CustomerIDs) != 100_000 {
			b.Fatalf("%d ids", len(dst.CustomerIDs))
		}
	}
}

// BenchmarkCheckJSONKeysSend100k is the part of BindJSONSend100k that checks
// keys: one scan that skips the array without tokenising it.
func BenchmarkCheckJSONKeysSend100k(b *testing.B) {
	body := sendBody100k()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if err := CheckJSONKeys(body, &sendShape{}); err != nil {
			b.Fatal(err)
		}
	}
}
