package dashboard

import (
	"fmt"
	"html/template"
	"strconv"
	"strings"
	"time"
)

// parseTemplates parses every template file into one set; each defined
// template is a page or a fragment, looked up by name.
func parseTemplates() (map[string]*template.Template, error) {
	set, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	out := map[string]*template.Template{}
	for _, t := range set.Templates() {
		out[t.Name()] = set
	}
	return out, nil
}

var funcs = template.FuncMap{
	"num": func(v any) string {
		var n int64
		switch x := v.(type) {
		case int:
			n = int64(x)
		case int64:
			n = x
		default:
			return fmt.Sprint(v)
		}
		s := strconv.FormatInt(n, 10)
		neg := strings.HasPrefix(s, "-")
		s = strings.TrimPrefix(s, "-")
		var b strings.Builder
		for i, r := range s {
			if i > 0 && (len(s)-i)%3 == 0 {
				b.WriteByte(',')
			}
			b.WriteRune(r)
		}
		if neg {
			return "-" + b.String()
		}
		return b.String()
	},
	"pct": func(part, whole int64) int64 {
		if whole <= 0 {
			return 0
		}
		return part * 100 / whole
	},
	"time": func(v any) string {
		switch t := v.(type) {
		case time.Time:
			return t.UTC().Format("2006-01-02 15:04:05")
		case *time.Time:
			if t == nil {
				return "—"
			}
			return t.UTC().Format("2006-01-02 15:04:05")
		}
		return "—"
	},
	"str": func(v any) string {
		switch s := v.(type) {
		case *string:
			if s == nil {
				return ""
			}
			return *s
		case *int64:
			if s == nil {
				return ""
			}
			return strconv.FormatInt(*s, 10)
		case *int:
			if s == nil {
				return ""
			}
			return strconv.Itoa(*s)
		}
		return fmt.Sprint(v)
	},
	"rate": func(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) },
	"eq2":  func(a, b, c string) bool { return a == b || a == c },
	"join": strings.Join,
	"ms":   func(ms int64) string { return strconv.FormatFloat(float64(ms)/1000, 'f', 1, 64) + " s" },
	"hhmm": func(t time.Time) string { return t.UTC().Format("15:04") },
	"dict": func(kv ...any) map[string]any {
		m := map[string]any{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	},
}
