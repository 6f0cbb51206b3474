package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/livekit/protocol/livekit"
	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
	"google.golang.org/protobuf/proto"
)

// protocolVersion is the LiveKit signal protocol this client speaks: two peer connections per
// participant (the client offers on the publisher one, the server offers on the subscriber one).
const protocolVersion = "16"

// PeerSpec is one benchmark peer as the orchestrator sends it (bench/loadgen/plan.py's PeerSpec, plus
// its LiveKit access token).
type PeerSpec struct {
	ID            string `json:"id"`
	Room          int    `json:"room"`
	Audio         bool   `json:"audio"`
	Video         bool   `json:"video"`
	ExpectStreams int    `json:"expect_streams"`
	Token         string `json:"token"`
}

func (s PeerSpec) publishes() bool { return s.Audio || s.Video }

// newAPI builds pion's API for every peer connection of this process: loopback only (host
// candidates on lo, IPv4 UDP, no mDNS, no STUN/TURN), Opus and VP8 only, the header extensions the
// Voxa and Janus loads negotiate (mid, ssrc-audio-level, abs-send-time), and no interceptors, so that
// receivers send no RTCP (no receiver reports, NACKs or TWCC feedback), like bench/loadgen's peers.
func newAPI() (*webrtc.API, error) {
	m := &webrtc.MediaEngine{}
	if err := m.RegisterCodec(webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{
			MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1",
		},
		PayloadType: 111,
	}, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, err
	}
	if err := m.RegisterCodec(webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000},
		PayloadType:        96,
	}, webrtc.RTPCodecTypeVideo); err != nil {
		return nil, err
	}
	for _, ext := range []struct {
		uri  string
		kind webrtc.RTPCodecType
	}{
		{midURI, webrtc.RTPCodecTypeAudio},
		{audioLevelURI, webrtc.RTPCodecTypeAudio},
		{midURI, webrtc.RTPCodecTypeVideo},
		{absSendTimeURI, webrtc.RTPCodecTypeVideo},
	} {
		if err := m.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: ext.uri}, ext.kind); err != nil {
			return nil, err
		}
	}
	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithSettingEngine(se)), nil
}

// Peer is one LiveKit participant: its signal WebSocket, its subscriber connection (every peer
// receives) and, for publishers, its publisher connection with one track per kind.
type Peer struct {
	spec   PeerSpec
	worker *Worker

	ws      *websocket.Conn
	wsMu    sync.Mutex
	sub     *webrtc.PeerConnection
	pub     *webrtc.PeerConnection
	senders []*Sender
	stop    chan struct{}
	closing atomic.Bool

	mu        sync.Mutex
	pending   map[*webrtc.PeerConnection][]webrtc.ICECandidateInit // trickled before the remote description
	ssrcs     map[uint32]struct{}
	published map[string]chan struct{} // track cid -> closed when the server confirms it
	pubAnswer chan webrtc.SessionDescription
	packets   atomic.Int64
	joined    bool
	left      string // why the server closed the participant, if it did
}

func newPeer(spec PeerSpec, w *Worker) *Peer {
	return &Peer{
		spec: spec, worker: w, stop: make(chan struct{}), ssrcs: map[uint32]struct{}{},
		pending:   map[*webrtc.PeerConnection][]webrtc.ICECandidateInit{},
		published: map[string]chan struct{}{}, pubAnswer: make(chan webrtc.SessionDescription, 1),
	}
}

func (p *Peer) send(req *livekit.SignalRequest) error {
	data, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	p.wsMu.Lock()
	defer p.wsMu.Unlock()
	_ = p.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return p.ws.WriteMessage(websocket.BinaryMessage, data)
}

// join connects the participant, publishes its tracks (publishers) and returns once every connection
// it needs is up; receiving starts on its own as the server adds subscriptions.
func (p *Peer) join(ctx context.Context) error {
	w := p.worker
	query := url.Values{
		"access_token":   {p.spec.Token},
		"auto_subscribe": {"1"},
		"protocol":       {protocolVersion},
		"sdk":            {"go"},
		"version":        {"voxa-bench"},
	}
	dialer := websocket.Dialer{HandshakeTimeout: 15 * time.Second}
	ws, resp, err := dialer.DialContext(ctx, w.wsURL+"/rtc?"+query.Encode(), nil)
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		return fmt.Errorf("signal connect: %w", err)
	}
	p.ws = ws
	first, err := p.read()
	if err != nil {
		return fmt.Errorf("join response: %w", err)
	}
	join := first.GetJoin()
	if join == nil {
		return fmt.Errorf("expected a join response, got %T", first.GetMessage())
	}
	if p.sub, err = w.api.NewPeerConnection(webrtc.Configuration{}); err != nil {
		return err
	}
	p.sub.OnTrack(p.onTrack)
	if p.spec.publishes() {
		if p.pub, err = w.api.NewPeerConnection(webrtc.Configuration{}); err != nil {
			return err
		}
	}
	go p.readLoop()
	go p.pingLoop(time.Duration(max(join.GetPingInterval(), 1)) * time.Second)
	if p.pub != nil {
		if err := p.publish(ctx); err != nil {
			return err
		}
	}
	p.mu.Lock()
	p.joined = true
	p.mu.Unlock()
	return nil
}

func (p *Peer) read() (*livekit.SignalResponse, error) {
	kind, data, err := p.ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	if kind != websocket.BinaryMessage {
		return nil, fmt.Errorf("unexpected WebSocket message type %d", kind)
	}
	msg := &livekit.SignalResponse{}
	if err := proto.Unmarshal(data, msg); err != nil {
		return nil, err
	}
	return msg, nil
}

func (p *Peer) publish(ctx context.Context) error {
	w := p.worker
	type published struct {
		track  *sendTrack
		tr     *webrtc.RTPTransceiver
		kind   string
		frames [][][]byte
	}
	var tracks []published
	kinds := []string{}
	if p.spec.Audio {
		kinds = append(kinds, "audio")
	}
	if p.spec.Video {
		kinds = append(kinds, "video")
	}
	for _, kind := range kinds {
		cid := p.spec.ID + "-" + kind
		req := &livekit.AddTrackRequest{Cid: cid, Name: kind, DisableRed: true}
		var track *sendTrack
		var frames [][][]byte
		if kind == "audio" {
			req.Type, req.Source = livekit.TrackType_AUDIO, livekit.TrackSource_MICROPHONE
			track = newSendTrack(cid, p.spec.ID, webrtc.RTPCodecTypeAudio)
			for _, f := range w.catalog.Opus {
				frames = append(frames, [][]byte{f})
			}
		} else {
			req.Type, req.Source = livekit.TrackType_VIDEO, livekit.TrackSource_CAMERA
			req.Width, req.Height = 640, 360 // the size bench/loadgen/media.py encodes
			track = newSendTrack(cid, p.spec.ID, webrtc.RTPCodecTypeVideo)
			frames = w.catalog.VP8
			if len(frames) == 0 {
				return errors.New("the catalog has no VP8 frames")
			}
		}
		confirmed := make(chan struct{})
		p.mu.Lock()
		p.published[cid] = confirmed
		p.mu.Unlock()
		if err := p.send(&livekit.SignalRequest{Message: &livekit.SignalRequest_AddTrack{AddTrack: req}}); err != nil {
			return err
		}
		select {
		case <-confirmed:
		case <-ctx.Done():
			return fmt.Errorf("track %s not confirmed: %w", cid, ctx.Err())
		}
		tr, err := p.pub.AddTransceiverFromTrack(track, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			return err
		}
		tracks = append(tracks, published{track, tr, kind, frames})
	}
	offer, err := p.pub.CreateOffer(nil)
	if err != nil {
		return err
	}
	gathered := webrtc.GatheringCompletePromise(p.pub)
	if err := p.pub.SetLocalDescription(offer); err != nil {
		return err
	}
	select {
	case <-gathered:
	case <-ctx.Done():
		return fmt.Errorf("publisher ICE gathering: %w", ctx.Err())
	}
	local := p.pub.LocalDescription()
	if err := p.send(&livekit.SignalRequest{Message: &livekit.SignalRequest_Offer{
		Offer: &livekit.SessionDescription{Type: "offer", Sdp: local.SDP},
	}}); err != nil {
		return err
	}
	var answer webrtc.SessionDescription
	select {
	case answer = <-p.pubAnswer:
	case <-ctx.Done():
		return fmt.Errorf("publisher answer: %w", ctx.Err())
	}
	answer.SDP = loopbackOnly(answer.SDP)
	if err := p.setRemote(p.pub, answer); err != nil {
		return err
	}
	if err := waitConnected(ctx, p.pub); err != nil {
		return fmt.Errorf("publisher connection: %w", err)
	}
	rng := rand.New(rand.NewPCG(uint64(w.index), uint64(len(p.spec.ID))^uint64(p.spec.Room)))
	for _, t := range tracks {
		t.track.mu.Lock()
		t.track.mid = t.tr.Mid()
		t.track.mu.Unlock()
		go drainRTCP(t.tr.Sender())
		s := newSender(p.spec.ID, t.kind, t.track, t.frames, w.window, rng)
		p.senders = append(p.senders, s)
		w.addSender(s)
		go s.run(p.stop)
	}
	return nil
}

// setRemote sets a remote description, then adds the candidates trickled before it.
func (p *Peer) setRemote(pc *webrtc.PeerConnection, desc webrtc.SessionDescription) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := pc.SetRemoteDescription(desc); err != nil {
		return err
	}
	queued := p.pending[pc]
	delete(p.pending, pc)
	for _, candidate := range queued {
		if err := pc.AddICECandidate(candidate); err != nil {
			return err
		}
	}
	return nil
}

func (p *Peer) addCandidate(pc *webrtc.PeerConnection, candidate webrtc.ICECandidateInit) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc.RemoteDescription() == nil {
		p.pending[pc] = append(p.pending[pc], candidate)
		return nil
	}
	return pc.AddICECandidate(candidate)
}

func waitConnected(ctx context.Context, pc *webrtc.PeerConnection) error {
	done := make(chan error, 1)
	report := func(err error) {
		select {
		case done <- err:
		default:
		}
	}
	pc.OnConnectionStateChange(func(state webrtc.PeerConnectionState) {
		switch state {
		case webrtc.PeerConnectionStateConnected:
			report(nil)
		case webrtc.PeerConnectionStateFailed, webrtc.PeerConnectionStateClosed:
			report(fmt.Errorf("peer connection %s", state))
		}
	})
	if pc.ConnectionState() == webrtc.PeerConnectionStateConnected {
		return nil
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// drainRTCP reads (and drops) what the server sends about a published track: PLI, receiver reports.
func drainRTCP(sender *webrtc.RTPSender) {
	buf := make([]byte, 1500)
	for {
		if _, _, err := sender.Read(buf); err != nil {
			return
		}
	}
}

func (p *Peer) readLoop() {
	for {
		msg, err := p.read()
		if err != nil {
			if !p.closing.Load() {
				p.worker.noteError("signal", fmt.Errorf("%s: %w", p.spec.ID, err))
			}
			return
		}
		if err := p.handle(msg); err != nil && !p.closing.Load() {
			p.worker.noteError("signal", fmt.Errorf("%s: %w", p.spec.ID, err))
		}
	}
}

func (p *Peer) handle(msg *livekit.SignalResponse) error {
	switch m := msg.GetMessage().(type) {
	case *livekit.SignalResponse_Offer: // the server's offer on the subscriber connection
		offer := webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: loopbackOnly(m.Offer.GetSdp())}
		if err := p.setRemote(p.sub, offer); err != nil {
			return fmt.Errorf("subscriber offer: %w", err)
		}
		answer, err := p.sub.CreateAnswer(nil)
		if err != nil {
			return err
		}
		gathered := webrtc.GatheringCompletePromise(p.sub)
		if err := p.sub.SetLocalDescription(answer); err != nil {
			return err
		}
		<-gathered // host candidates on lo only: immediate
		return p.send(&livekit.SignalRequest{Message: &livekit.SignalRequest_Answer{
			Answer: &livekit.SessionDescription{Type: "answer", Sdp: p.sub.LocalDescription().SDP, Id: m.Offer.GetId()},
		}})
	case *livekit.SignalResponse_Answer:
		select {
		case p.pubAnswer <- webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: m.Answer.GetSdp()}:
		default:
		}
	case *livekit.SignalResponse_Trickle:
		var candidate webrtc.ICECandidateInit
		if err := json.Unmarshal([]byte(m.Trickle.GetCandidateInit()), &candidate); err != nil {
			return fmt.Errorf("trickle: %w", err)
		}
		if !loopbackCandidate(candidate.Candidate) {
			return nil // never a target off this machine
		}
		pc := p.sub
		if m.Trickle.GetTarget() == livekit.SignalTarget_PUBLISHER {
			pc = p.pub
		}
		if pc != nil {
			return p.addCandidate(pc, candidate)
		}
	case *livekit.SignalResponse_TrackPublished:
		p.mu.Lock()
		ch := p.published[m.TrackPublished.GetCid()]
		delete(p.published, m.TrackPublished.GetCid())
		p.mu.Unlock()
		if ch != nil {
			close(ch)
		}
	case *livekit.SignalResponse_Leave:
		p.mu.Lock()
		p.left = m.Leave.GetReason().String()
		p.mu.Unlock()
		if !p.closing.Load() {
			p.worker.noteError("server_closed_peer", fmt.Errorf("%s: %s", p.spec.ID, m.Leave.GetReason()))
		}
	}
	return nil
}

func (p *Peer) pingLoop(interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-ticker.C:
			now := time.Now().UnixMilli()
			_ = p.send(&livekit.SignalRequest{Message: &livekit.SignalRequest_Ping{Ping: now}})
			_ = p.send(&livekit.SignalRequest{Message: &livekit.SignalRequest_PingReq{
				PingReq: &livekit.Ping{Timestamp: now},
			}})
		}
	}
}

// onTrack counts what one subscribed track receives: every RTP packet (by arrival time) and, for
// sequence numbers that are a multiple of decrypt_every, the latency from the send time in the last
// 8 payload bytes (bench/loadgen/worker.py's Meter does the same).
func (p *Peer) onTrack(track *webrtc.TrackRemote, receiver *webrtc.RTPReceiver) {
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := receiver.Read(buf); err != nil {
				return
			}
			p.worker.rtcpDropped.Add(1)
		}
	}()
	w := p.worker
	mask := uint16(w.decryptEvery - 1)
	buf := make([]byte, 1600)
	for {
		n, _, err := track.Read(buf)
		if err != nil {
			return
		}
		now := monoNow()
		p.packets.Add(1)
		if w.window.contains(now) {
			w.rxWindow.Add(1)
		}
		if n < 12 {
			w.rxBad.Add(1)
			continue
		}
		data := buf[:n]
		ssrc := uint32(data[8])<<24 | uint32(data[9])<<16 | uint32(data[10])<<8 | uint32(data[11])
		p.mu.Lock()
		if len(p.ssrcs) < p.spec.ExpectStreams {
			p.ssrcs[ssrc] = struct{}{}
		}
		p.mu.Unlock()
		seq := uint16(data[2])<<8 | uint16(data[3])
		if seq&mask != 0 {
			continue
		}
		if data[0]&0x20 != 0 { // padding: its length is the last byte
			pad := int(data[n-1])
			if pad >= n-12 {
				continue
			}
			data = data[:n-pad]
		}
		if len(data) < 12+sendTimeTrailer {
			w.rxBad.Add(1)
			continue
		}
		tail := data[len(data)-sendTimeTrailer:]
		sent := int64(uint64(tail[0])<<56 | uint64(tail[1])<<48 | uint64(tail[2])<<40 | uint64(tail[3])<<32 |
			uint64(tail[4])<<24 | uint64(tail[5])<<16 | uint64(tail[6])<<8 | uint64(tail[7]))
		if w.window.contains(sent) {
			w.addLatency(now - sent)
		}
	}
}

func (p *Peer) streamsReceived() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ssrcs)
}

// close leaves the room (LeaveRequest), then closes both connections and the signal socket.
func (p *Peer) close() {
	if !p.closing.CompareAndSwap(false, true) {
		return
	}
	for _, s := range p.senders {
		s.dead.Store(true)
	}
	close(p.stop)
	if p.ws != nil {
		_ = p.send(&livekit.SignalRequest{Message: &livekit.SignalRequest_Leave{Leave: &livekit.LeaveRequest{
			Reason: livekit.DisconnectReason_CLIENT_INITIATED, Action: livekit.LeaveRequest_DISCONNECT,
		}}})
	}
	for _, pc := range []*webrtc.PeerConnection{p.pub, p.sub} {
		if pc != nil {
			_ = pc.Close()
		}
	}
	if p.ws != nil {
		_ = p.ws.Close()
	}
}

// loopbackOnly drops every ICE candidate line of an SDP that is not on 127.0.0.0/8.
func loopbackOnly(sdp string) string {
	lines := strings.Split(sdp, "\r\n")
	out := lines[:0]
	for _, line := range lines {
		if strings.HasPrefix(line, "a=candidate:") && !loopbackCandidate(line[2:]) {
			continue
		}
		out = append(out, line)
	}
	return strings.Join(out, "\r\n")
}

// loopbackCandidate: "candidate:<foundation> <component> <transport> <priority> <address> <port> typ ..."
func loopbackCandidate(candidate string) bool {
	fields := strings.Fields(candidate)
	if len(fields) < 6 {
		return false
	}
	ip := net.ParseIP(fields[4])
	return ip != nil && ip.IsLoopback() && ip.To4() != nil
}
