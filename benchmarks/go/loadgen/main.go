// Command loadgen is the WebSocket side of `make bench` (benchmarks/push_fanout.py drives it).
//
// Why Go and not asyncio clients: on this 2-core machine the load generator shares the CPU with
// the server under test, so it must cost far less per delivered message than the server does.
// One goroutine per connection, no JSON decoding on the hot path (the publish timestamp is found
// with a byte search), per-connection latency buffers merged only when a phase is reported.
//
// It opens -clients connections to one server, speaking either our push protocol ("ours":
// ws://.../ws?token=JWT, then {"type":"subscribe"}) or Centrifugo's JSON protocol v2
// ("centrifugo": {"connect":{"token"}}, {"subscribe":{"channel"}}, newline-batched frames,
// {} pings answered with {}). Tokens are HS256 JWTs signed here with -secret, one `sub` per
// connection (bench-<i>), so per-user limits never interfere.
//
// Control is line-based on stdin/stdout (JSON lines out):
//
//	(start)                          -> {"event":"ready",...} once every client is subscribed
//	wait <phase> <per_client> <timeout_s> -> {"event":"phase",...} when every live client got
//	                                    <per_client> messages of <phase>, or on timeout/stall
//	quit                             -> closes every connection and exits
//
// Every published payload carries "bench_ts":<unix ns at publish> and "bench_phase":<n>; the
// latency of a delivery is receive time minus bench_ts (same host, same clock).
package main

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

const maxPhases = 8

type config struct {
	proto       string
	url         string
	channel     string
	clients     int
	secret      string
	audience    string
	issuer      string
	concurrency int
	stall       time.Duration
}

// conn is one client connection and what it received, per phase.
type conn struct {
	ws        *websocket.Conn
	mu        sync.Mutex
	latencies [maxPhases][]int32 // microseconds
	counts    [maxPhases]int
}

type loader struct {
	cfg          config
	conns        []*conn
	phaseCount   [maxPhases]atomic.Int64
	firstRecv    [maxPhases]atomic.Int64
	lastRecv     [maxPhases]atomic.Int64
	alive        atomic.Int64
	disconnected atomic.Int64
	closeCodes   sync.Map // close code -> *atomic.Int64
	quitting     atomic.Bool
}

var (
	tsMarker    = []byte(`"bench_ts":`)
	phaseMarker = []byte(`"bench_phase":`)
	pubMarker   = []byte(`"pub"`)
	pingFrame   = []byte(`{}`)
)

func b64(data []byte) string { return base64.RawURLEncoding.EncodeToString(data) }

// hs256 signs claims as a compact JWT (header {"alg":"HS256","typ":"JWT"}).
func hs256(claims map[string]any, secret string) string {
	header := b64([]byte(`{"alg":"HS256","typ":"JWT"}`))
	body, err := json.Marshal(claims)
	if err != nil {
		panic(err)
	}
	signingInput := header + "." + b64(body)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(signingInput))
	return signingInput + "." + b64(mac.Sum(nil))
}

func (l *loader) token(i int) string {
	now := time.Now().Unix()
	claims := map[string]any{"sub": fmt.Sprintf("bench-%d", i), "iat": now, "exp": now + 3600}
	if l.cfg.proto == "ours" {
		claims["nbf"] = now
		claims["aud"] = l.cfg.audience
		claims["iss"] = l.cfg.issuer
		claims["channels"] = []string{l.cfg.channel}
	}
	return hs256(claims, l.cfg.secret)
}

// parseInt reads the decimal integer right after marker in frame (-1 if absent).
func parseInt(frame, marker []byte) int64 {
	i := bytes.Index(frame, marker)
	if i < 0 {
		return -1
	}
	var v int64
	seen := false
	for _, c := range frame[i+len(marker):] {
		if c == ' ' && !seen {
			continue
		}
		if c < '0' || c > '9' {
			break
		}
		v = v*10 + int64(c-'0')
		seen = true
	}
	if !seen {
		return -1
	}
	return v
}

// readUntil reads frames until one contains want (setup replies); Centrifugo pings are answered.
func readUntil(ws *websocket.Conn, want string, deadline time.Time) error {
	if err := ws.SetReadDeadline(deadline); err != nil {
		return err
	}
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			return err
		}
		if bytes.Contains(data, []byte(`"error"`)) {
			return fmt.Errorf("server error reply: %.200s", data)
		}
		if bytes.Contains(data, []byte(want)) {
			return ws.SetReadDeadline(time.Time{})
		}
	}
}

func (l *loader) dial(i int) (*conn, error) {
	dialer := websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 4096, WriteBufferSize: 1024}
	deadline := time.Now().Add(30 * time.Second)
	url := l.cfg.url
	if l.cfg.proto == "ours" {
		url += "?token=" + l.token(i)
	}
	ws, _, err := dialer.Dial(url, http.Header{})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*conn, error) {
		ws.Close()
		return nil, err
	}
	if l.cfg.proto == "ours" {
		if err := readUntil(ws, `"connected"`, deadline); err != nil {
			return fail(fmt.Errorf("connect: %w", err))
		}
		sub := fmt.Sprintf(`{"type":"subscribe","id":1,"channel":%q}`, l.cfg.channel)
		if err := ws.WriteMessage(websocket.TextMessage, []byte(sub)); err != nil {
			return fail(err)
		}
		if err := readUntil(ws, `"subscribed"`, deadline); err != nil {
			return fail(fmt.Errorf("subscribe: %w", err))
		}
	} else {
		connect := fmt.Sprintf(`{"id":1,"connect":{"token":%q}}`, l.token(i))
		if err := ws.WriteMessage(websocket.TextMessage, []byte(connect)); err != nil {
			return fail(err)
		}
		if err := readUntil(ws, `"id":1`, deadline); err != nil {
			return fail(fmt.Errorf("connect: %w", err))
		}
		sub := fmt.Sprintf(`{"id":2,"subscribe":{"channel":%q}}`, l.cfg.channel)
		if err := ws.WriteMessage(websocket.TextMessage, []byte(sub)); err != nil {
			return fail(err)
		}
		if err := readUntil(ws, `"id":2`, deadline); err != nil {
			return fail(fmt.Errorf("subscribe: %w", err))
		}
	}
	return &conn{ws: ws}, nil
}

func (l *loader) record(c *conn, frame []byte, now int64) {
	ts := parseInt(frame, tsMarker)
	phase := parseInt(frame, phaseMarker)
	if ts < 0 || phase < 0 || phase >= maxPhases {
		return
	}
	lat := (now - ts) / 1000
	if lat < 0 {
		lat = 0
	}
	c.mu.Lock()
	c.latencies[phase] = append(c.latencies[phase], int32(min(lat, 1<<31-1)))
	c.counts[phase]++
	c.mu.Unlock()
	l.phaseCount[phase].Add(1)
	l.firstRecv[phase].CompareAndSwap(0, now)
	for {
		last := l.lastRecv[phase].Load()
		if now <= last || l.lastRecv[phase].CompareAndSwap(last, now) {
			break
		}
	}
}

func (l *loader) readLoop(c *conn) {
	defer func() {
		l.alive.Add(-1)
		if !l.quitting.Load() {
			l.disconnected.Add(1)
		}
	}()
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			if ce, ok := err.(*websocket.CloseError); ok && !l.quitting.Load() {
				v, _ := l.closeCodes.LoadOrStore(ce.Code, new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
			}
			return
		}
		now := time.Now().UnixNano()
		if l.cfg.proto == "ours" {
			l.record(c, data, now)
			continue
		}
		// Centrifugo puts several replies/pushes into one frame, separated by newlines.
		for len(data) > 0 {
			line := data
			if i := bytes.IndexByte(data, '\n'); i >= 0 {
				line, data = data[:i], data[i+1:]
			} else {
				data = nil
			}
			if bytes.Equal(line, pingFrame) {
				_ = c.ws.WriteMessage(websocket.TextMessage, pingFrame)
				continue
			}
			if bytes.Contains(line, pubMarker) {
				l.record(c, line, now)
			}
		}
	}
}

func (l *loader) connectAll() (int, int, []string) {
	type result struct {
		c   *conn
		err error
	}
	results := make([]result, l.cfg.clients)
	sem := make(chan struct{}, l.cfg.concurrency)
	var wg sync.WaitGroup
	for i := range l.cfg.clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var c *conn
			var err error
			for attempt := range 3 { // a full accept backlog refuses a few; retry those
				if c, err = l.dial(i); err == nil {
					break
				}
				time.Sleep(time.Duration(200*(attempt+1)) * time.Millisecond)
			}
			results[i] = result{c, err}
		}()
	}
	wg.Wait()
	failed := 0
	var errs []string
	for _, r := range results {
		if r.err != nil {
			failed++
			if len(errs) < 5 {
				errs = append(errs, r.err.Error())
			}
			continue
		}
		l.conns = append(l.conns, r.c)
	}
	l.alive.Store(int64(len(l.conns)))
	for _, c := range l.conns {
		go l.readLoop(c)
	}
	return len(l.conns), failed, errs
}

func percentile(sorted []int32, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	idx := int(p/100*float64(len(sorted)-1) + 0.5)
	return float64(sorted[idx]) / 1000
}

// wait blocks until every client got perClient messages of phase, the timeout, or a stall.
func (l *loader) wait(phase, perClient int, timeout time.Duration) map[string]any {
	start := time.Now()
	deadline := start.Add(timeout)
	lastCount, lastChange := int64(-1), time.Now()
	for time.Now().Before(deadline) {
		count := l.phaseCount[phase].Load()
		if count >= l.alive.Load()*int64(perClient) && count > 0 {
			break
		}
		if count != lastCount {
			lastCount, lastChange = count, time.Now()
		} else if time.Since(lastChange) > l.cfg.stall {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	var all []int32
	complete := 0
	for _, c := range l.conns {
		c.mu.Lock()
		all = append(all, c.latencies[phase]...)
		if c.counts[phase] >= perClient {
			complete++
		}
		c.mu.Unlock()
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	var sum float64
	for _, v := range all {
		sum += float64(v)
	}
	mean := 0.0
	if len(all) > 0 {
		mean = sum / float64(len(all)) / 1000
	}
	codes := map[string]int64{}
	l.closeCodes.Range(func(k, v any) bool {
		codes[strconv.Itoa(k.(int))] = v.(*atomic.Int64).Load()
		return true
	})
	maxMs := 0.0
	if len(all) > 0 {
		maxMs = float64(all[len(all)-1]) / 1000
	}
	return map[string]any{
		"event": "phase", "phase": phase, "expected": int64(len(l.conns)) * int64(perClient),
		"delivered": len(all), "clients_complete": complete, "alive": l.alive.Load(),
		"disconnected": l.disconnected.Load(), "close_codes": codes,
		"first_recv_ns": l.firstRecv[phase].Load(), "last_recv_ns": l.lastRecv[phase].Load(),
		"p50_ms": percentile(all, 50), "p95_ms": percentile(all, 95), "p99_ms": percentile(all, 99),
		"max_ms": maxMs, "mean_ms": mean,
	}
}

func emit(doc map[string]any) {
	out, _ := json.Marshal(doc)
	fmt.Println(string(out))
}

func main() {
	var cfg config
	flag.StringVar(&cfg.proto, "proto", "ours", "ours | centrifugo")
	flag.StringVar(&cfg.url, "url", "", "WebSocket URL")
	flag.StringVar(&cfg.channel, "channel", "aggregates.fixed", "channel to subscribe")
	flag.IntVar(&cfg.clients, "clients", 1000, "connections to open")
	flag.StringVar(&cfg.secret, "secret", "", "HMAC secret for HS256 tokens")
	flag.StringVar(&cfg.audience, "aud", "", "aud claim (ours)")
	flag.StringVar(&cfg.issuer, "iss", "", "iss claim (ours)")
	flag.IntVar(&cfg.concurrency, "concurrency", 64, "connections being set up at once")
	stallS := flag.Float64("stall", 5, "seconds without a delivery that end a wait")
	flag.Parse()
	cfg.stall = time.Duration(*stallS * float64(time.Second))
	if cfg.proto != "ours" && cfg.proto != "centrifugo" {
		fmt.Fprintln(os.Stderr, "-proto must be ours or centrifugo")
		os.Exit(2)
	}
	l := &loader{cfg: cfg}
	t0 := time.Now()
	ok, failed, errs := l.connectAll()
	emit(map[string]any{"event": "ready", "connected": ok, "failed": failed, "errors": errs,
		"connect_s": time.Since(t0).Seconds()})

	scanner := bufio.NewScanner(os.Stdin)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) == 0 {
			continue
		}
		switch fields[0] {
		case "wait":
			if len(fields) != 4 {
				emit(map[string]any{"event": "error", "error": "usage: wait <phase> <per_client> <timeout_s>"})
				continue
			}
			phase, _ := strconv.Atoi(fields[1])
			perClient, _ := strconv.Atoi(fields[2])
			timeoutS, _ := strconv.ParseFloat(fields[3], 64)
			if phase < 0 || phase >= maxPhases {
				emit(map[string]any{"event": "error", "error": "phase out of range"})
				continue
			}
			emit(l.wait(phase, perClient, time.Duration(timeoutS*float64(time.Second))))
		case "quit":
			l.quitting.Store(true)
			for _, c := range l.conns {
				_ = c.ws.WriteControl(websocket.CloseMessage,
					websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
				_ = c.ws.Close()
			}
			emit(map[string]any{"event": "bye"})
			return
		}
	}
}
