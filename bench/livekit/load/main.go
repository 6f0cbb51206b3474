// Command lkload is one load process of the SFU benchmark (bench/sfu.py) against livekit-server: the
// same peers, media and measurement windows as bench/loadgen/worker.py, as LiveKit participants.
//
// It reads one JSON command per line on stdin and answers each with one JSON line on stdout (logs go
// to stderr): join (wave "publish" then "subscribe"), wait_flowing, window, collect, leave, status,
// exit. The answers have the fields worker.py's answers have, so the orchestrator handles both alike.
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v4"
)

const maxErrorsKept = 20

// Worker is the process's state: its peers, senders and the counters of the current window.
type Worker struct {
	index        int
	wsURL        string
	catalog      *Catalog
	api          *webrtc.API
	window       *Window
	decryptEvery int
	concurrency  int
	joinTimeout  time.Duration
	maxSamples   int

	mu         sync.Mutex
	peers      map[string]*Peer
	senders    []*Sender
	latencies  []int64
	errors     map[string]int
	errSamples []string

	rxWindow    atomic.Int64
	rxBad       atomic.Int64
	rxErrors    atomic.Int64
	rtcpDropped atomic.Int64
}

func (w *Worker) noteError(kind string, err error) string {
	text := err.Error()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.errors[kind]++
	if len(w.errSamples) < maxErrorsKept {
		sample := kind + ": " + text
		if len(sample) > 500 {
			sample = sample[:500]
		}
		w.errSamples = append(w.errSamples, sample)
	}
	return text
}

func (w *Worker) addSender(s *Sender) {
	w.mu.Lock()
	w.senders = append(w.senders, s)
	w.mu.Unlock()
}

func (w *Worker) addLatency(ns int64) {
	if ns < 0 || ns > 60_000_000_000 {
		w.rxBad.Add(1)
		return
	}
	w.mu.Lock()
	if len(w.latencies) < w.maxSamples {
		w.latencies = append(w.latencies, ns)
	}
	w.mu.Unlock()
}

type message = map[string]any

func (w *Worker) joinOne(spec PeerSpec, wave string) error {
	if wave == "publish" && !spec.publishes() {
		return nil
	}
	if wave == "subscribe" && spec.publishes() {
		return nil // publishers receive on the subscriber connection they opened when joining
	}
	peer := newPeer(spec, w)
	w.mu.Lock()
	w.peers[spec.ID] = peer
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), w.joinTimeout)
	defer cancel()
	if err := peer.join(ctx); err != nil {
		w.mu.Lock()
		delete(w.peers, spec.ID)
		w.mu.Unlock()
		peer.close()
		return fmt.Errorf("%s: %w", spec.ID, err)
	}
	return nil
}

func (w *Worker) join(cmd json.RawMessage) (message, error) {
	var req struct {
		Wave  string     `json:"wave"`
		Peers []PeerSpec `json:"peers"`
	}
	if err := json.Unmarshal(cmd, &req); err != nil {
		return nil, err
	}
	started := time.Now()
	failed := map[string]string{}
	var mu sync.Mutex
	queue := make(chan PeerSpec, len(req.Peers))
	for _, p := range req.Peers {
		queue <- p
	}
	close(queue)
	var wg sync.WaitGroup
	for range max(1, min(w.concurrency, len(req.Peers))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for spec := range queue {
				if err := w.joinOne(spec, req.Wave); err != nil {
					text := w.noteError("join_"+req.Wave, err)
					mu.Lock()
					failed[spec.ID] = text
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return message{"failed": failed, "seconds": round2(time.Since(started).Seconds())}, nil
}

func (w *Worker) waitFlowing(cmd json.RawMessage) (message, error) {
	var req struct {
		Timeout float64 `json:"timeout"`
	}
	req.Timeout = 20
	if err := json.Unmarshal(cmd, &req); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(time.Duration(req.Timeout * float64(time.Second)))
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	for {
		var missing [][]any
		w.mu.Lock()
		peers := make([]*Peer, 0, len(w.peers))
		for _, p := range w.peers {
			peers = append(peers, p)
		}
		w.mu.Unlock()
		sort.Slice(peers, func(i, j int) bool { return peers[i].spec.ID < peers[j].spec.ID })
		for _, p := range peers {
			if got := p.streamsReceived(); got < p.spec.ExpectStreams && !p.closing.Load() {
				missing = append(missing, []any{p.spec.ID, got, p.spec.ExpectStreams})
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			return message{"flowing": len(missing) == 0, "missing": missing[:min(10, len(missing))], "missing_count": len(missing)}, nil
		}
		<-ticker.C
	}
}

func (w *Worker) startWindow(cmd json.RawMessage) (message, error) {
	var req struct {
		T0 int64 `json:"t0"`
		T1 int64 `json:"t1"`
	}
	if err := json.Unmarshal(cmd, &req); err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.latencies = w.latencies[:0]
	for _, s := range w.senders {
		s.windowSent.Store(0)
		s.lateSends.Store(0)
		s.lateMaxNs.Store(0)
	}
	w.mu.Unlock()
	w.rxWindow.Store(0)
	w.rxBad.Store(0)
	w.window.t0.Store(req.T0)
	w.window.t1.Store(req.T1)
	return message{}, nil
}

func (w *Worker) collect(json.RawMessage) (message, error) {
	sent := map[string]map[string]int64{}
	var late, lateMax, sendErrors int64
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.senders {
		sendErrors += s.errors.Load()
		if s.dead.Load() {
			continue
		}
		if sent[s.peerID] == nil {
			sent[s.peerID] = map[string]int64{}
		}
		sent[s.peerID][s.kind] = s.windowSent.Load()
		late += s.lateSends.Load()
		lateMax = max(lateMax, s.lateMaxNs.Load())
		if text, ok := s.lastErrText.Load().(string); ok && len(w.errSamples) < maxErrorsKept {
			sample := "send: " + s.peerID + ": " + text
			if !contains(w.errSamples, sample) {
				w.errSamples = append(w.errSamples, sample)
			}
		}
	}
	raw := make([]byte, 8*len(w.latencies))
	for i, v := range w.latencies {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(v)) // Python's array("q") on x86-64
	}
	var rxTotal int64
	for _, p := range w.peers {
		rxTotal += p.packets.Load()
	}
	errs := map[string]int{}
	for k, v := range w.errors {
		errs[k] = v
	}
	return message{
		"sent":          sent,
		"received":      w.rxWindow.Load(),
		"latencies_b64": base64.StdEncoding.EncodeToString(raw),
		"rx_total":      rxTotal,
		"rx_errors":     w.rxErrors.Load(),
		"rtcp_dropped":  w.rtcpDropped.Load(),
		"rx_bad":        w.rxBad.Load(),
		"late_sends":    late,
		"late_max_ms":   round2(float64(lateMax) / 1e6),
		"send_errors":   sendErrors,
		"errors":        errs,
		"error_samples": append([]string{}, w.errSamples...),
	}, nil
}

func (w *Worker) leave(cmd json.RawMessage) (message, error) {
	var req struct {
		IDs []string `json:"ids"`
	}
	if err := json.Unmarshal(cmd, &req); err != nil {
		return nil, err
	}
	started := time.Now()
	var gone []*Peer
	w.mu.Lock()
	for _, id := range req.IDs {
		if p, ok := w.peers[id]; ok {
			gone = append(gone, p)
			delete(w.peers, id)
		}
	}
	w.mu.Unlock()
	closeAll(gone)
	w.mu.Lock()
	kept := w.senders[:0]
	for _, s := range w.senders {
		if !s.dead.Load() {
			kept = append(kept, s)
		}
	}
	w.senders = kept
	w.mu.Unlock()
	return message{"left": len(gone), "seconds": round2(time.Since(started).Seconds())}, nil
}

func closeAll(peers []*Peer) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for _, p := range peers {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p.close()
		}()
	}
	wg.Wait()
}

func (w *Worker) status(json.RawMessage) (message, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	joined, live := 0, 0
	for _, p := range w.peers {
		p.mu.Lock()
		if p.joined {
			joined++
		}
		p.mu.Unlock()
	}
	for _, s := range w.senders {
		if !s.dead.Load() {
			live++
		}
	}
	errs := map[string]int{}
	for k, v := range w.errors {
		errs[k] = v
	}
	return message{"peers": len(w.peers), "joined": joined, "senders": live, "errors": errs}, nil
}

func contains(items []string, item string) bool {
	for _, s := range items {
		if s == item {
			return true
		}
	}
	return false
}

func round2(v float64) float64 { return float64(int64(v*100+0.5)) / 100 }

func main() {
	index := flag.Int("index", 0, "this load process's index (seeds its random phases)")
	wsURL := flag.String("url", "", "livekit-server's signal URL, ws://127.0.0.1:<port>")
	catalogPath := flag.String("catalog", "", "the pre-encoded media (JSON written by the orchestrator)")
	decryptEvery := flag.Int("decrypt-every", 8, "latency from packets whose sequence number is a multiple of this (a power of 2)")
	concurrency := flag.Int("concurrency", 12, "peer setups in flight")
	joinTimeout := flag.Duration("join-timeout", 40*time.Second, "one peer's setup at most")
	maxRuntime := flag.Duration("max-runtime", 15*time.Minute, "exit after this, whatever happens")
	maxSamples := flag.Int("max-latency-samples", 4_000_000, "latency samples kept per window")
	flag.Parse()
	log.SetPrefix(fmt.Sprintf("[lkload %d] ", *index))
	if !strings.HasPrefix(*wsURL, "ws://127.") {
		log.Fatalf("--url must be a loopback ws:// URL, got %q", *wsURL)
	}
	if *decryptEvery < 1 || *decryptEvery&(*decryptEvery-1) != 0 || *decryptEvery > 256 {
		log.Fatalf("--decrypt-every must be a power of 2 in 1..256")
	}
	out := json.NewEncoder(os.Stdout)
	reply := func(m message) {
		if err := out.Encode(m); err != nil {
			log.Fatalf("stdout: %v", err)
		}
	}
	catalog, err := loadCatalog(*catalogPath)
	if err != nil {
		reply(message{"op": "ready", "error": err.Error()})
		return
	}
	api, err := newAPI()
	if err != nil {
		reply(message{"op": "ready", "error": err.Error()})
		return
	}
	w := &Worker{
		index: *index, wsURL: *wsURL, catalog: catalog, api: api, window: &Window{},
		decryptEvery: *decryptEvery, concurrency: *concurrency, joinTimeout: *joinTimeout,
		maxSamples: *maxSamples, peers: map[string]*Peer{}, errors: map[string]int{},
	}
	time.AfterFunc(*maxRuntime, func() {
		log.Printf("max runtime reached: exiting")
		os.Exit(3)
	})
	reply(message{"op": "ready", "pid": os.Getpid()})
	handlers := map[string]func(json.RawMessage) (message, error){
		"join":         w.join,
		"wait_flowing": w.waitFlowing,
		"window":       w.startWindow,
		"collect":      w.collect,
		"leave":        w.leave,
		"status":       w.status,
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	for in.Scan() {
		line := in.Bytes()
		var head struct {
			Op string `json:"op"`
		}
		if err := json.Unmarshal(line, &head); err != nil {
			reply(message{"op": "?", "error": err.Error()})
			continue
		}
		if head.Op == "exit" {
			break
		}
		handler, ok := handlers[head.Op]
		var result message
		if !ok {
			err = fmt.Errorf("unknown op %q", head.Op)
		} else {
			result, err = handler(json.RawMessage(line))
		}
		if err != nil {
			result = message{"error": err.Error()}
		}
		result["op"] = head.Op
		reply(result)
	}
	// stdin closed (the orchestrator is gone) or exit: leave every room, bounded.
	w.mu.Lock()
	peers := make([]*Peer, 0, len(w.peers))
	for _, p := range w.peers {
		peers = append(peers, p)
	}
	w.mu.Unlock()
	done := make(chan struct{})
	go func() { closeAll(peers); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}
