package main

import (
	"syscall"
	"time"
)

// blockingRead makes a pipe, lets another goroutine write one byte into it
// after delay, and reads that byte with readFD.
//
//go:noinline
func blockingRead(delay time.Duration) (int, error) {
	var fds [2]int
	if err := syscall.Pipe(fds[:]); err != nil {
		return 0, err
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	go func() {
		time.Sleep(delay)
		syscall.Write(fds[1], []byte{'x'})
	}()
	return readFD(fds[0], make([]byte, 1))
}

// readFD blocks in the read(2) system call (the pipe is in blocking mode,
// so the Go runtime's poller is not involved) for about the writer's delay.
//
//go:noinline
func readFD(fd int, buf []byte) (int, error) {
	count("main.readFD")
	return syscall.Read(fd, buf)
}
