package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v4"
	"golang.org/x/sys/unix"
)

// The load shape of bench/loadgen/media.py, packet for packet: Opus 20 ms frames (one packet each) and
// a 30 fps VP8 GOP (a keyframe, then deltas; the frame's packets back to back, marker on the last),
// every payload followed by the 8-byte big-endian CLOCK_MONOTONIC ns of its sending.
const (
	opusClockStep   = 960  // 20 ms at 48 kHz
	videoClockStep  = 3000 // 30 fps at 90 kHz
	audioPeriod     = 20 * time.Millisecond
	videoPeriod     = 33333333 * time.Nanosecond
	skipBehind      = 200 * time.Millisecond // a sender further behind than this skips ahead
	lateThreshold   = 5 * time.Millisecond   // a send later than this (in the window) counts as late
	midURI          = "urn:ietf:params:rtp-hdrext:sdes:mid"
	audioLevelURI   = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
	absSendTimeURI  = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
	maxSendErrors   = 100
	sendTimeTrailer = 8
)

// Speech-like RFC 6464 levels (-dBov) with the voice-activity bit, the sequence media.py cycles through.
var speechLevels = []byte{22, 25, 28, 24, 30, 35, 27, 23, 26, 31, 38, 29}

// The monotonic clock in the orchestrator's units (Python's time.monotonic_ns(), CLOCK_MONOTONIC):
// read once through the system call, then advanced by Go's own monotonic clock.
var (
	monoBase  int64
	monoStart time.Time
)

func init() {
	var ts unix.Timespec
	monoStart = time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	monoBase = ts.Nano()
}

func monoNow() int64 { return monoBase + int64(time.Since(monoStart)) }

// Catalog is the pre-encoded media the orchestrator wrote (bench/loadgen/media.py's MediaCatalog).
type Catalog struct {
	Opus [][]byte   `json:"opus"`
	VP8  [][][]byte `json:"vp8"`
}

func loadCatalog(path string) (*Catalog, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c Catalog
	if err := json.Unmarshal(data, &c); err != nil { // []byte fields are base64 in JSON
		return nil, fmt.Errorf("catalog %s: %w", path, err)
	}
	if len(c.Opus) == 0 {
		return nil, fmt.Errorf("catalog %s has no Opus frames", path)
	}
	return &c, nil
}

// Window is the measurement window [t0, t1) in monotonic ns, shared by every sender and receiver.
type Window struct {
	t0, t1 atomic.Int64
}

func (w *Window) contains(t int64) bool { return w.t0.Load() <= t && t < w.t1.Load() }

// sendTrack is a webrtc.TrackLocal whose packets are built here, like media.py's StreamSender: the
// header extensions the answer negotiated (mid; ssrc-audio-level or abs-send-time), written to the
// sender's stream as whole RTP packets.
type sendTrack struct {
	id, stream string
	kind       webrtc.RTPCodecType
	mime       string

	mu      sync.Mutex
	writer  webrtc.TrackLocalWriter
	ssrc    uint32
	pt      uint8
	midID   uint8
	levelID uint8
	absID   uint8
	mid     string
}

func newSendTrack(id, stream string, kind webrtc.RTPCodecType) *sendTrack {
	mime := webrtc.MimeTypeOpus
	if kind == webrtc.RTPCodecTypeVideo {
		mime = webrtc.MimeTypeVP8
	}
	return &sendTrack{id: id, stream: stream, kind: kind, mime: mime}
}

func (t *sendTrack) Bind(ctx webrtc.TrackLocalContext) (webrtc.RTPCodecParameters, error) {
	for _, codec := range ctx.CodecParameters() {
		if !strings.EqualFold(codec.MimeType, t.mime) {
			continue
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		t.writer = ctx.WriteStream()
		t.ssrc = uint32(ctx.SSRC())
		t.pt = uint8(codec.PayloadType)
		for _, ext := range ctx.HeaderExtensions() {
			switch ext.URI {
			case midURI:
				t.midID = uint8(ext.ID)
			case audioLevelURI:
				t.levelID = uint8(ext.ID)
			case absSendTimeURI:
				t.absID = uint8(ext.ID)
			}
		}
		return codec, nil
	}
	return webrtc.RTPCodecParameters{}, webrtc.ErrUnsupportedCodec
}

func (t *sendTrack) Unbind(webrtc.TrackLocalContext) error {
	t.mu.Lock()
	t.writer = nil
	t.mu.Unlock()
	return nil
}

func (t *sendTrack) ID() string                { return t.id }
func (t *sendTrack) RID() string               { return "" }
func (t *sendTrack) StreamID() string          { return t.stream }
func (t *sendTrack) Kind() webrtc.RTPCodecType { return t.kind }

// Sender paces one published track in real time from a random phase (as loadgen's Pacer does).
type Sender struct {
	peerID string
	kind   string // "audio" or "video"
	track  *sendTrack
	frames [][][]byte // per frame: its RTP payloads
	window *Window

	index      int
	levelIndex int
	seq        uint16
	ts         uint32
	period     time.Duration

	dead        atomic.Bool
	sent        atomic.Int64
	windowSent  atomic.Int64
	lateSends   atomic.Int64
	lateMaxNs   atomic.Int64
	errors      atomic.Int64
	lastErrText atomic.Value
}

func newSender(peerID, kind string, track *sendTrack, frames [][][]byte, window *Window, rng *rand.Rand) *Sender {
	s := &Sender{peerID: peerID, kind: kind, track: track, frames: frames, window: window}
	s.seq = uint16(rng.Uint32())
	s.ts = rng.Uint32()
	s.levelIndex = rng.IntN(len(speechLevels))
	if kind == "audio" {
		s.period = audioPeriod
		s.index = rng.IntN(len(frames))
	} else {
		s.period = videoPeriod // video starts on the keyframe
	}
	return s
}

// run fires the sender every period until it is marked dead or stop closes.
func (s *Sender) run(stop <-chan struct{}) {
	due := monoNow() + rand.Int64N(int64(s.period))
	timer := time.NewTimer(0)
	defer timer.Stop()
	for !s.dead.Load() {
		wait := time.Duration(due - monoNow())
		if wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-stop:
				return
			}
		}
		s.fire(due)
		due += int64(s.period)
		if now := monoNow(); due < now-int64(skipBehind) {
			due = now + int64(s.period)
		}
	}
}

func (s *Sender) fire(due int64) {
	t := s.track
	t.mu.Lock()
	writer, ssrc, pt := t.writer, t.ssrc, t.pt
	midID, levelID, absID, mid := t.midID, t.levelID, t.absID, t.mid
	t.mu.Unlock()
	frame := s.frames[s.index]
	s.index = (s.index + 1) % len(s.frames)
	now := monoNow()
	inWindow := s.window.contains(now)
	if late := now - due; inWindow && late > int64(lateThreshold) {
		s.lateSends.Add(1)
		for {
			old := s.lateMaxNs.Load()
			if late <= old || s.lateMaxNs.CompareAndSwap(old, late) {
				break
			}
		}
	}
	level := byte(0)
	if s.kind == "audio" {
		level = 0x80 | speechLevels[s.levelIndex]
		s.levelIndex = (s.levelIndex + 1) % len(speechLevels)
	}
	seq := s.seq
	for i, payload := range frame {
		marker := s.kind == "video" && i == len(frame)-1
		packet := buildPacket(pt, marker, seq, s.ts, ssrc, midID, mid, s.kind, levelID, level, absID, now, payload)
		if writer == nil {
			s.noteError(fmt.Errorf("track not bound"))
		} else if _, err := writer.Write(packet); err != nil {
			s.noteError(err)
		}
		seq++
	}
	s.seq = seq
	if s.kind == "audio" {
		s.ts += opusClockStep
	} else {
		s.ts += videoClockStep
	}
	s.sent.Add(int64(len(frame)))
	if inWindow {
		s.windowSent.Add(int64(len(frame)))
	}
}

func (s *Sender) noteError(err error) {
	if s.errors.Add(1) > maxSendErrors {
		s.dead.Store(true)
	}
	s.lastErrText.Store(err.Error())
}

// buildPacket lays out one RTP packet exactly as media.py does: the one-byte-header extension block
// (mid, then audio level or abs-send-time), the payload, then the 8-byte send time.
func buildPacket(
	pt uint8, marker bool, seq uint16, ts, ssrc uint32, midID uint8, mid, kind string,
	levelID, level, absID uint8, now int64, payload []byte,
) []byte {
	var ext []byte
	if midID != 0 && len(mid) >= 1 && len(mid) <= 16 && midID <= 14 {
		ext = append(ext, midID<<4|byte(len(mid)-1))
		ext = append(ext, mid...)
	}
	if kind == "audio" && levelID != 0 {
		ext = append(ext, levelID<<4, level)
	} else if kind == "video" && absID != 0 {
		abs := uint32((uint64(now)<<18)/1_000_000_000) & 0xFFFFFF
		ext = append(ext, absID<<4|2, byte(abs>>16), byte(abs>>8), byte(abs))
	}
	for len(ext)%4 != 0 {
		ext = append(ext, 0)
	}
	size := 12 + len(payload) + sendTimeTrailer
	if len(ext) > 0 {
		size += 4 + len(ext)
	}
	b := make([]byte, 12, size)
	b[0] = 0x80
	if len(ext) > 0 {
		b[0] = 0x90
	}
	b[1] = pt & 0x7F
	if marker {
		b[1] |= 0x80
	}
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[4:], ts)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	if len(ext) > 0 {
		b = binary.BigEndian.AppendUint16(b, 0xBEDE)
		b = binary.BigEndian.AppendUint16(b, uint16(len(ext)/4))
		b = append(b, ext...)
	}
	b = append(b, payload...)
	return binary.BigEndian.AppendUint64(b, uint64(now))
}
