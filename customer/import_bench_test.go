package customer

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
)

// importBenchRows is the size of the import the issue measured (12 s before
// the import streamed).
const importBenchRows = 100_000

// maxImportLiveGrowth bounds the memory an import of importBenchRows rows
// may keep live, the body excluded (the benchmark holds it before
// measuring): two batches of rows, each phone's first position and the
// first reported problems. Before imports streamed, the same import kept
// every row three times over (about 60 MB).
const maxImportLiveGrowth = 16 << 20

// BenchmarkImport100k posts a valid 100,000-row import, CSV and JSON,
// through the handler and reports the seconds it takes, the bytes it
// allocates, and at their peaks (sampled every millisecond) the growth of
// the live heap (as marked by each GC), of the heap with its garbage, and of
// the process's RSS. It fails if the live heap grows by more than
// maxImportLiveGrowth. Run it with
//
//	go test -run='^$' -bench=Import100k -benchtime=3x ./customer/
func BenchmarkImport100k(b *testing.B) {
	for _, format := range []string{"csv", "json"} {
		b.Run(format, func(b *testing.B) {
			v := newEnv(b, "KE", HandlerOptions{})
			contentType, body := importBenchBody(b, format, importBenchRows)
			var secs, allocMB, liveMB, heapMB, rssMB float64
			for b.Loop() {
				b.StopTimer()
				if _, err := v.db.Exec(`TRUNCATE customers CASCADE`); err != nil {
					b.Fatal(err)
				}
				m := startMemWatch()
				start := time.Now()
				b.StartTimer()

				req := httptest.NewRequest(http.MethodPost, "/customers/import", strings.NewReader(body))
				req.Header.Set(echo.HeaderContentType, contentType)
				rec := httptest.NewRecorder()
				v.e.ServeHTTP(rec, req)

				b.StopTimer()
				elapsed := time.Since(start)
				g := m.stop()
				if rec.Code != http.StatusCreated {
					b.Fatalf("status %d: %.300s", rec.Code, rec.Body)
				}
				if g.live > maxImportLiveGrowth {
					b.Errorf("the live heap grew by %.1f MB during the import; the bound is %d MB", float64(g.live)/(1<<20), maxImportLiveGrowth>>20)
				}
				secs += elapsed.Seconds()
				allocMB += float64(g.alloc) / (1 << 20)
				liveMB = max(liveMB, float64(g.live)/(1<<20))
				heapMB = max(heapMB, float64(g.heap)/(1<<20))
				rssMB = max(rssMB, float64(g.rss)/(1<<20))
				b.StartTimer()
			}
			n := float64(b.N)
			b.ReportMetric(secs/n, "s/import")
			b.ReportMetric(allocMB/n, "MB-alloc/import")
			b.ReportMetric(liveMB, "MB-peak-live-growth")
			b.ReportMetric(heapMB, "MB-peak-heap-growth")
			b.ReportMetric(rssMB, "MB-peak-RSS-growth")
			b.ReportMetric(float64(len(body))/(1<<20), "MB-body")
		})
	}
}

// importBenchBody renders n valid, distinct customers as a CSV or JSON body.
func importBenchBody(b *testing.B, format string, n int) (contentType, body string) {
	b.Helper()
	if format == "csv" {
		var sb strings.Builder
		sb.WriteString("phone,first_name,last_name,location,preferred_product\n")
		for i := range n {
			fmt.Fprintf(&sb, "%s,First %d,Last %d,Nairobi,Running Shoes\n", phone(i), i, i)
		}
		return "text/csv", sb.String()
	}
	rows := make([]Input, n)
	for i := range rows {
		rows[i] = Input{Phone: phone(i), FirstName: "First " + strconv.Itoa(i), LastName: "Last " + strconv.Itoa(i),
			Location: "Nairobi", PreferredProduct: "Running Shoes"}
	}
	raw, err := json.Marshal(rows)
	if err != nil {
		b.Fatal(err)
	}
	return "application/json", string(raw)
}

// memWatch measures one import: bytes allocated (runtime.MemStats), the
// peaks above where they started of the live heap (as the last GC marked
// it) and of the heap with its garbage (both sampled every millisecond), and
// the growth of the process's peak RSS (VmHWM, reset through clear_refs).
type memWatch struct {
	before              runtime.MemStats
	liveStart, rssStart int64
	done                chan struct{}
	wg                  sync.WaitGroup
	peakLive, peakHeap  uint64
}

// memGrowth is what a memWatch measured, in bytes.
type memGrowth struct{ alloc, live, heap, rss int64 }

func startMemWatch() *memWatch {
	m := &memWatch{done: make(chan struct{})}
	// Twice: objects cached in a sync.Pool (encoding/json keeps its last
	// buffer, as large as the body) outlive one collection.
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m.before)
	// "5" resets the peak RSS to the current RSS (Linux 4.0 and later); where
	// it cannot, the RSS figure is the process's peak so far.
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	m.rssStart = procStatusKB("VmRSS")
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(sample)
	m.liveStart = int64(sample[0].Value.Uint64())
	m.wg.Go(func() { // exits when stop closes done
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			m.peakLive = max(m.peakLive, sample[0].Value.Uint64())
			m.peakHeap = max(m.peakHeap, sample[1].Value.Uint64())
			select {
			case <-m.done:
				return
			case <-t.C:
			}
		}
	})
	return m
}

// stop ends the measurement and returns it.
func (m *memWatch) stop() memGrowth {
	close(m.done)
	m.wg.Wait()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	return memGrowth{
		alloc: int64(after.TotalAlloc - m.before.TotalAlloc),
		live:  max(int64(m.peakLive)-m.liveStart, 0),
		heap:  max(int64(m.peakHeap)-int64(m.before.HeapAlloc), 0),
		rss:   max((procStatusKB("VmHWM")-m.rssStart)<<10, 0),
	}
}

// procStatusKB reads a "kB" field of /proc/self/status, 0 where there is none.
func procStatusKB(field string) int64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(raw)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return n
		}
	}
	return 0
}
