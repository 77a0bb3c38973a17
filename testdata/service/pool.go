package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// runLoop handles cfg.Requests requests in-process with cfg.Workers worker
// goroutines.
func runLoop(s *Server, cfg Config) {
	jobs := make(chan Request)
	results := make(chan Response, cfg.Workers)
	var wg sync.WaitGroup
	for w := 0; w < cfg.Workers; w++ {
		wg.Add(1)
		go s.worker(w, jobs, results, &wg)
	}
	go func() {
		for i := 0; i < cfg.Requests; i++ {
			jobs <- newRequest(i)
		}
		close(jobs)
	}()
	go func() {
		wg.Wait()
		close(results)
	}()
	for range results {
	}
}

// worker handles requests from jobs until it is closed.
//
//go:noinline
func (s *Server) worker(id int, jobs <-chan Request, out chan<- Response, wg *sync.WaitGroup) {
	defer wg.Done()
	for req := range jobs {
		out <- s.handle(req)
	}
}

// runHTTP serves (*Server).ServeHTTP on 127.0.0.1 and sends it
// cfg.Requests requests from cfg.Workers client goroutines.
func runHTTP(s *Server, cfg Config) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: s}
	go srv.Serve(ln)
	defer srv.Close()

	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Workers},
		Timeout:   30 * time.Second,
	}
	defer client.CloseIdleConnections()
	base := "http://" + ln.Addr().String() + "/handle"

	jobs := make(chan Request)
	errs := make(chan error, cfg.Workers)
	var wg sync.WaitGroup
	for w := 0; w < cfg.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for req := range jobs {
				if err := fetch(client, base, req); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := 0; i < cfg.Requests; i++ {
		jobs <- newRequest(i)
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// fetch sends one request to the server and checks the answer.
//
//go:noinline
func fetch(client *http.Client, base string, req Request) error {
	q := url.Values{}
	q.Set("id", strconv.Itoa(req.ID))
	q.Set("name", req.Name)
	q.Set("size", strconv.Itoa(req.Size))
	q.Set("kind", strconv.Itoa(req.Kind))
	resp, err := client.Get(base + "?" + q.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("request %d: HTTP %d: %s", req.ID, resp.StatusCode, body)
	}
	return nil
}

// ServeHTTP decodes a Request from the query string and handles it.
//
//go:noinline
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var req Request
	var errs [3]error
	req.ID, errs[0] = strconv.Atoi(q.Get("id"))
	req.Size, errs[1] = strconv.Atoi(q.Get("size"))
	req.Kind, errs[2] = strconv.Atoi(q.Get("kind"))
	req.Name = q.Get("name")
	for _, err := range errs {
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	resp := s.handle(req)
	fmt.Fprintf(w, "id=%d weight=%d sum=%d err=%v\n", resp.ID, resp.Weight, resp.Sum, resp.Err)
}
